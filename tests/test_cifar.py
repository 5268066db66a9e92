"""CIFAR-FS and FC100 from generated CIFAR-100 fixtures in the formats users download.

No CIFAR-100 exists on the test machines, so the fixtures are written here: the
python archive (`cifar-100-python.tar.gz` with the `train`, `test` and `meta`
pickles) and TFDS's prepared `cifar100`, which TFDS itself builds from the binary
release (`cifar-100-binary/`). Each class gets `PER_CLASS` images instead of 600
(5 train + 1 test), with pixels that encode class, part and index.
"""

import os
import pickle
import tarfile

import numpy as np
import pytest

from fsl_jax.data import cifar, errors, registry

TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 1
PER_CLASS = TRAIN_PER_CLASS + TEST_PER_CLASS
SPLITS = os.path.join(os.path.dirname(cifar.__file__), 'splits')


def names(filename):
  with open(os.path.join(SPLITS, filename)) as f:
    return [line.strip() for line in f if line.strip()]


def structure():
  """CIFAR-100's fine names (alphabetical, as in its meta file), coarse names, and
  each fine class's coarse index."""
  with open(os.path.join(SPLITS, 'cifar100_coarse_to_fine.txt')) as f:
    table = [(c.strip(), fines.split()) for c, fines in (line.split(':') for line in f)]
  fine = sorted(f for _, fines in table for f in fines)
  coarse = sorted(c for c, _ in table)
  coarse_of = {f: coarse.index(c) for c, fines in table for f in fines}
  return fine, coarse, [coarse_of[f] for f in fine]


def pixels(label, part, index):
  """A 32x32x3 image that says which one it is."""
  image = np.zeros((32, 32, 3), np.uint8)
  image[0, 0] = (label, part, index)
  image[1:, :, 0] = (label * 7 + index) % 256
  image[:, 1:, 1] = np.arange(31, dtype=np.uint8)[None, :] + part
  return image


def part_examples(part, count, fine, coarse_labels):
  """(images HWC, fine labels, coarse labels), interleaving the classes as the real files do."""
  rng = np.random.default_rng(part)
  order = rng.permutation(np.repeat(np.arange(len(fine)), count))
  seen = np.zeros(len(fine), int)
  images, labels = [], []
  for label in order:
    images.append(pixels(label, part, seen[label]))
    labels.append(int(label))
    seen[label] += 1
  return np.stack(images), labels, [coarse_labels[i] for i in labels]


@pytest.fixture(scope='module')
def cifar_root(tmp_path_factory):
  """A data dir with `cifar100/cifar-100-python.tar.gz`, and the binary release."""
  fine, coarse, coarse_labels = structure()
  root = tmp_path_factory.mktemp('cifar')
  build = root / 'build'
  (build / 'cifar-100-python').mkdir(parents=True)
  (build / 'cifar-100-binary').mkdir()
  for part, name, count in ((0, 'train', TRAIN_PER_CLASS), (1, 'test', TEST_PER_CLASS)):
    images, labels, coarse_part = part_examples(part, count, fine, coarse_labels)
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(build / 'cifar-100-python' / name, 'wb') as f:
      pickle.dump({b'filenames': [f'{i}.png'.encode() for i in range(len(images))],
                   b'batch_label': name.encode(), b'fine_labels': labels,
                   b'coarse_labels': coarse_part, b'data': planar}, f)
    records = np.concatenate([np.array(coarse_part, np.uint8)[:, None],
                              np.array(labels, np.uint8)[:, None], planar], axis=1)
    records.tofile(build / 'cifar-100-binary' / f'{name}.bin')
  with open(build / 'cifar-100-python' / 'meta', 'wb') as f:
    pickle.dump({b'fine_label_names': [n.encode() for n in fine],
                 b'coarse_label_names': [n.encode() for n in coarse]}, f)
  for filename, values in (('fine_label_names.txt', fine), ('coarse_label_names.txt', coarse)):
    (build / 'cifar-100-binary' / filename).write_text('\n'.join(values) + '\n')
  (root / 'data' / 'cifar100').mkdir(parents=True)
  with tarfile.open(root / 'data' / 'cifar100' / cifar.ARCHIVE, 'w:gz') as tar:
    tar.add(build / 'cifar-100-python', arcname='cifar-100-python')
  return root


@pytest.fixture(autouse=True)
def small_classes(monkeypatch):
  monkeypatch.setattr(cifar, 'PER_CLASS', PER_CLASS)


def expected_class(label):
  return np.stack([pixels(label, 0, i) for i in range(TRAIN_PER_CLASS)]
                  + [pixels(label, 1, i) for i in range(TEST_PER_CLASS)])


def test_published_splits_are_consistent():
  fine, coarse, _ = structure()
  fs = {s: names(f'cifar_fs_{s}.txt') for s in ('train', 'val', 'test')}
  assert [len(fs[s]) for s in ('train', 'val', 'test')] == [64, 16, 20]
  assert sorted(fs['train'] + fs['val'] + fs['test']) == fine
  fc = {s: names(f'fc100_{s}.txt') for s in ('train', 'val', 'test')}
  assert [len(fc[s]) for s in ('train', 'val', 'test')] == [12, 4, 4]
  assert sorted(fc['train'] + fc['val'] + fc['test']) == coarse
  # TADAM's split by superclass index.
  assert [coarse.index(c) for c in fc['test']] == [0, 7, 12, 14]
  assert [coarse.index(c) for c in fc['val']] == [8, 11, 13, 16]


def test_cifar_fs_and_fc100_from_the_python_archive(cifar_root, tmp_path):
  fine, coarse, coarse_labels = structure()
  data, cache = str(cifar_root / 'data'), str(tmp_path / 'cache')
  for split, count in (('train', 64), ('val', 16), ('test', 20), ('trainval', 80)):
    ds = registry.load_dataset('cifar_fs', split, data, cache)
    assert ds.images.shape == (count, PER_CLASS, 32, 32, 3)
    wanted = set(names(f'cifar_fs_{split}.txt')) if split != 'trainval' else set(
      names('cifar_fs_train.txt') + names('cifar_fs_val.txt'))
    assert set(ds.class_names) == wanted
    for row in (0, count - 1):
      np.testing.assert_array_equal(ds.images[row], expected_class(fine.index(ds.class_names[row])))
  for split, count in (('train', 60), ('val', 20), ('test', 20)):
    ds = registry.load_dataset('fc100', split, data, cache)
    assert ds.images.shape == (count, PER_CLASS, 32, 32, 3)
    superclasses = {coarse[coarse_labels[fine.index(n)]] for n in ds.class_names}
    assert superclasses == set(names(f'fc100_{split}.txt'))
    label = fine.index(ds.class_names[3])
    np.testing.assert_array_equal(ds.images[3], expected_class(label))
  # One decode serves both datasets and all splits.
  [entry] = os.listdir(tmp_path / 'cache' / 'cifar100')
  assert sorted(os.listdir(tmp_path / 'cache' / 'cifar100' / entry)) == ['all.json', 'all.npy']


def test_tfds_prepared_cifar100_gives_the_same_array(cifar_root, tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  tfds_dir = tmp_path / 'tfds'
  builder = tfds.builder('cifar100', data_dir=str(tfds_dir))
  # TFDS prepares cifar100 from the binary release; give it the fixture's instead
  # of downloading.
  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                      lambda self, url: str(cifar_root / 'build'))
  builder.download_and_prepare()
  monkeypatch.setenv('TFDS_DATA_DIR', str(tfds_dir))
  from_tfds = cifar.load_cifar100(str(tmp_path / 'no_archive_here'), str(tmp_path / 'c1'))
  from_archive = cifar.load_cifar100(str(cifar_root / 'data'), str(tmp_path / 'c2'))
  assert from_tfds.class_names == from_archive.class_names
  np.testing.assert_array_equal(from_tfds.images, from_archive.images)


def test_missing_cifar_names_both_sources(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setenv('HOME', str(tmp_path))
  with pytest.raises(errors.DatasetNotFoundError, match='cifar-100-python.tar.gz.*tfds'):
    registry.load_dataset('fc100', 'train', str(tmp_path), str(tmp_path / 'cache'))


def test_a_tfds_folder_without_tfds_installed_says_how_to_install_it(tmp_path, monkeypatch):
  import sys
  (tmp_path / 'tfds' / 'cifar100' / '3.0.2').mkdir(parents=True)
  (tmp_path / 'tfds' / 'cifar100' / '3.0.2' / 'dataset_info.json').write_text('{}')
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # As if not installed.
  with pytest.raises(errors.DataError,
                     match=r"needs tensorflow_datasets: pip install 'fsl_jax\[tfds\]'"):
    registry.load_dataset('fc100', 'train', str(tmp_path), str(tmp_path / 'cache'))


def test_corrupt_archive_and_incomplete_classes_are_clear_errors(cifar_root, tmp_path):
  (tmp_path / 'cifar100').mkdir()
  payload = (cifar_root / 'data' / 'cifar100' / cifar.ARCHIVE).read_bytes()
  (tmp_path / 'cifar100' / cifar.ARCHIVE).write_bytes(payload[:len(payload) // 2])
  with pytest.raises(errors.CorruptDatasetError, match='not a readable tar.gz'):
    registry.load_dataset('cifar_fs', 'test', str(tmp_path), str(tmp_path / 'cache'))
  assert not (tmp_path / 'cache' / 'cifar100').exists() or not any(
    f for _, _, files in os.walk(tmp_path / 'cache') for f in files)
  # The extracted folder, with one training image dropped: a class is short.
  folder = tmp_path / 'x' / 'cifar100' / cifar.FOLDER
  with tarfile.open(cifar_root / 'data' / 'cifar100' / cifar.ARCHIVE) as tar:
    tar.extractall(tmp_path / 'x' / 'cifar100', filter='data')
  with open(folder / 'train', 'rb') as f:
    train = pickle.load(f)
  train[b'data'], train[b'fine_labels'] = train[b'data'][1:], train[b'fine_labels'][1:]
  with open(folder / 'train', 'wb') as f:
    pickle.dump(train, f)
  with pytest.raises(errors.CorruptDatasetError, match='should have 6 images'):
    registry.load_dataset('cifar_fs', 'test', str(tmp_path / 'x'), str(tmp_path / 'cache'))
