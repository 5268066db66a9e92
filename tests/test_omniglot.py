"""Omniglot loading: the Vinyals split, the cache, TFDS, and clear errors on bad data."""

import os
import sys
import zipfile

import numpy as np
import pytest

from fsl_jax.data import errors, omniglot


@pytest.mark.parametrize('split', ['train', 'val', 'test', 'trainval'])
def test_derived_split_matches_published_split_files(data_dir, split):
  dataset = omniglot.load(split, data_dir)
  with open(os.path.join(data_dir, 'omniglot', 'splits', 'vinyals', f'{split}.txt')) as f:
    expected = f.read().split()
  assert len(dataset.class_names) == len(expected)
  assert set(dataset.class_names) == set(expected)
  assert dataset.images.shape == (len(expected), 20, 28, 28, 1)
  assert dataset.images.dtype == np.uint8


def test_split_sizes_and_disjointness(omniglot):
  chars = {s: {n.rsplit('/', 1)[0] for n in ds.class_names} for s, ds in omniglot.items()}
  assert [len(chars[s]) for s in ('train', 'val', 'test')] == [1028, 172, 423]
  assert not chars['train'] & chars['val'] and not chars['train'] & chars['test']
  assert not chars['val'] & chars['test']


def test_rotations_are_rotated_copies(omniglot):
  ds = omniglot['test']
  base = ds.class_names.index('Gurmukhi/character42/rot000')
  rot90 = ds.class_names.index('Gurmukhi/character42/rot090')
  np.testing.assert_array_equal(ds.images[rot90], np.rot90(ds.images[base], 1, axes=(1, 2)))
  # Strokes are bright on a dark background, and every image has some ink.
  assert (ds.images.reshape(ds.images.shape[:2] + (-1,)).max(-1) == 255).mean() > 0.99
  assert ds.images.mean() < 60


def _small_archives(tmp_path, data_dir, alphabets=2, drop=None):
  """A tiny copy of both archives in the upstream layout: the first alphabets."""
  root = tmp_path / 'data' / 'omniglot'
  root.mkdir(parents=True)
  for archive in omniglot.ARCHIVES:
    with zipfile.ZipFile(os.path.join(data_dir, 'omniglot', archive + '.zip')) as src, \
        zipfile.ZipFile(root / (archive + '.zip'), 'w') as dst:
      keep = sorted({n.split('/')[1] for n in src.namelist() if n.endswith('.png')})[:alphabets]
      for name in src.namelist():
        if name.endswith('.png') and name.split('/')[1] in keep and name != drop:
          dst.writestr(name, src.read(name))
  return str(tmp_path / 'data')


def test_cache_is_reused_and_a_corrupt_cache_is_rebuilt(tmp_path, data_dir):
  small = _small_archives(tmp_path, data_dir)
  cache = str(tmp_path / 'cache')
  first = omniglot.load('train', small, cache)
  [entry] = os.listdir(os.path.join(cache, 'omniglot'))
  npz = os.path.join(cache, 'omniglot', entry, 'train.npy')
  mtime = os.path.getmtime(npz)
  second = omniglot.load('train', small, cache)
  assert os.path.getmtime(npz) == mtime  # Read from the cache, not decoded again.
  np.testing.assert_array_equal(first.images, second.images)
  with open(npz, 'r+b') as f:  # Corrupt the cached pixels.
    f.seek(2000)
    f.write(b'\x00' * 64)
  third = omniglot.load('train', small, cache)
  np.testing.assert_array_equal(first.images, third.images)
  folder = os.path.join(cache, 'omniglot', entry)
  assert not [n for n in os.listdir(folder) if n.startswith('.tmp')]


def test_too_few_characters_for_the_split_is_a_clear_error(tmp_path, data_dir):
  small = _small_archives(tmp_path, data_dir)
  with pytest.raises(errors.CorruptDatasetError, match='test split is empty'):
    omniglot.load('test', small, str(tmp_path / 'cache'))


def test_missing_data_names_the_files_and_the_fix(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setenv('HOME', str(tmp_path))
  with pytest.raises(errors.DatasetNotFoundError) as e:
    omniglot.load('train', str(tmp_path / 'nowhere'), str(tmp_path / 'cache'))
  message = str(e.value)
  assert 'images_background.zip' in message and 'images_evaluation.zip' in message
  assert str(tmp_path / 'nowhere' / 'omniglot') in message and 'data_dir' in message
  # Both sources: the TFDS folders searched too.
  for tfds_dir in ('nowhere/tensorflow_datasets', 'tfds', 'tensorflow_datasets'):
    assert str(tmp_path / tfds_dir / 'omniglot') in message
  assert "tfds.builder('omniglot'" in message


def test_corrupt_archive_is_a_clear_error(tmp_path, data_dir):
  small = _small_archives(tmp_path, data_dir)
  path = os.path.join(small, 'omniglot', 'images_evaluation.zip')
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(errors.CorruptDatasetError, match='images_evaluation.zip'):
    omniglot.load('test', small, str(tmp_path / 'cache'))
  assert not os.path.exists(tmp_path / 'cache' / 'omniglot') or not [
    n for n in os.listdir(tmp_path / 'cache' / 'omniglot') if not n.startswith('.tmp')
  ]


def test_incomplete_class_is_a_clear_error(tmp_path, data_dir):
  with zipfile.ZipFile(os.path.join(data_dir, 'omniglot', 'images_background.zip')) as z:
    victim = sorted(n for n in z.namelist() if n.endswith('.png'))[0]
  small = _small_archives(tmp_path, data_dir, drop=victim)
  with pytest.raises(errors.CorruptDatasetError, match='has 19 images, expected 20'):
    omniglot.load('train', small, str(tmp_path / 'cache'))


def test_unknown_split():
  with pytest.raises(errors.DataError, match="Unknown Omniglot split 'training'"):
    omniglot.load('training')


def test_a_cache_dir_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch):
  """Below a file (mkdir fails), and full or read-only (writing fails: root ignores
  permissions here, so the write is made to fail), nothing is left half-written."""
  from fsl_jax.data import cache
  from fsl_jax.data.dataset import ClassMajorDataset
  dataset = ClassMajorDataset(np.zeros((2, 1, 4, 4, 1), np.uint8), ('a', 'b'))
  (tmp_path / 'file').write_text('')
  with pytest.raises(errors.DataError, match=r'Cannot create the cache folder .*file/below'):
    cache.write(str(tmp_path / 'file' / 'below'), 'train', dataset)

  def full(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(np, 'save', full)
  with pytest.raises(errors.DataError, match=r'No space left on device.*free some space'):
    cache.write(str(tmp_path / 'cache'), 'train', dataset)
  assert os.listdir(tmp_path / 'cache') == []


def _tiny_fixture(root, data_dir):
  """Real upstream images of a few characters, as archives and as TFDS extracts them.

  `root/data/omniglot/` gets both zips: three background alphabets and two
  evaluation ones, the first and last character of each, 20 drawings a character.
  `root/extracted/<name>/` gets the folders TFDS's download manager extracts:
  `train`/`eval` from those zips; `small1`/`small2` (splits fsl_jax ignores) one
  drawing of every real character, since TFDS's builder insists on all 50
  alphabets and 1623 character labels.
  """
  (root / 'data' / 'omniglot').mkdir(parents=True)
  extracted = {}
  for archive, alphabets, tfds_name, small in (('images_background', 3, 'train', 'small1'),
                                               ('images_evaluation', 2, 'eval', 'small2')):
    zip_path = root / 'data' / 'omniglot' / (archive + '.zip')
    with zipfile.ZipFile(os.path.join(data_dir, 'omniglot', archive + '.zip')) as src, \
        zipfile.ZipFile(zip_path, 'w') as dst:
      pngs = sorted(n for n in src.namelist() if n.endswith('.png'))
      chars = {}
      for n in pngs:
        _, alphabet, char, _ = n.split('/')
        chars.setdefault(alphabet, set()).add(char)
      keep = {(a, c) for a in sorted(chars)[:alphabets] for c in (min(chars[a]), max(chars[a]))}
      for n in pngs:
        if tuple(n.split('/')[1:3]) in keep:
          dst.writestr(n, src.read(n))
          _write(root / 'extracted' / tfds_name / n, src.read(n))
        if n.endswith('_01.png'):
          _write(root / 'extracted' / small / f'{archive}_{small}' / n.split('/', 1)[1],
                 src.read(n))
    extracted.update({tfds_name: str(root / 'extracted' / tfds_name),
                      small: str(root / 'extracted' / small)})
  return extracted


def _write(path, payload):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(payload)


@pytest.fixture(scope='module')
def tiny_tfds(tmp_path_factory, data_dir):
  """`(archives data dir, TFDS data dir)`: one tiny Omniglot in both formats."""
  tfds = pytest.importorskip('tensorflow_datasets')
  root = tmp_path_factory.mktemp('omniglot_tfds')
  extracted = _tiny_fixture(root, data_dir)
  builder = tfds.builder('omniglot', data_dir=str(root / 'tfds_data' / 'tensorflow_datasets'))
  with pytest.MonkeyPatch.context() as m:  # The fixture's folders instead of a download.
    m.setattr(tfds.download.DownloadManager, 'download_and_extract',
              lambda self, urls: {k: extracted[k] for k in urls})
    builder.download_and_prepare()
  return str(root / 'data'), str(root / 'tfds_data')


@pytest.fixture
def tiny_split(monkeypatch):
  """The Vinyals split rules scaled to the tiny fixture: 6 background + 1 evaluation
  character for train+val (the cut inside an alphabet, as Gurmukhi's), one validation
  alphabet, 3 test characters."""
  monkeypatch.setattr(omniglot, 'NUM_TRAINVAL_CHARACTERS', 7)
  monkeypatch.setattr(omniglot, 'VAL_ALPHABETS', ('Anglo-Saxon_Futhorc',))


def test_tfds_prepared_omniglot_gives_the_same_arrays(tiny_tfds, tiny_split, tmp_path,
                                                      monkeypatch):
  archives, tfds_data = tiny_tfds
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'none'))
  sizes = {'train': 5 * 4, 'val': 2 * 4, 'trainval': 7 * 4, 'test': 3 * 4}
  for split, classes in sizes.items():
    from_tfds = omniglot.load(split, tfds_data, str(tmp_path / 'c1'))
    from_archives = omniglot.load(split, archives, str(tmp_path / 'c2'))
    assert from_tfds.images.shape == (classes, 20, 28, 28, 1)
    assert from_tfds.class_names == from_archives.class_names
    np.testing.assert_array_equal(from_tfds.images, from_archives.images)
    if split == 'val':
      assert from_tfds.class_names[0] == 'Anglo-Saxon_Futhorc/character01/rot000'
  # Each source has its own cache entry, decoded once into the same layout.
  [tfds_entry] = os.listdir(tmp_path / 'c1' / 'omniglot')
  [archive_entry] = os.listdir(tmp_path / 'c2' / 'omniglot')
  assert tfds_entry.startswith(f'v{omniglot._CACHE_FORMAT}-tfds-') and tfds_entry != archive_entry
  assert sorted(os.listdir(tmp_path / 'c1' / 'omniglot' / tfds_entry)) == sorted(
    os.listdir(tmp_path / 'c2' / 'omniglot' / archive_entry))


def test_tfds_with_an_unknown_key_scheme_keeps_its_file_order(tiny_tfds, tiny_split,
                                                              monkeypatch, caplog):
  """If the drawers cannot be recovered, the classes still hold the right images."""
  import tensorflow_datasets as tfds
  archives, tfds_data = tiny_tfds
  builder = tfds.builder('omniglot', data_dir=os.path.join(tfds_data, 'tensorflow_datasets'))
  expected = omniglot._decode_archives(
    {a: os.path.join(archives, 'omniglot', a + '.zip') for a in omniglot.ARCHIVES})
  monkeypatch.setattr(omniglot, '_key_hash', lambda salt, key: hash(key))
  got = omniglot._decode_tfds(builder)
  assert 'classes keep the file order' in caplog.text
  assert got.keys() == expected.keys()
  # TFDS's file order is not the drawer order: recovering it is what makes the
  # arrays equal in the test above.
  assert not all(np.array_equal(got[k], expected[k]) for k in expected)
  for key, images in expected.items():
    assert sorted(i.tobytes() for i in got[key]) == sorted(i.tobytes() for i in images)


def test_a_tfds_folder_without_tfds_installed_says_how_to_install_it(tmp_path, monkeypatch):
  (tmp_path / 'tfds' / 'omniglot' / '3.0.0').mkdir(parents=True)
  (tmp_path / 'tfds' / 'omniglot' / '3.0.0' / 'dataset_info.json').write_text('{}')
  (tmp_path / 'data' / 'omniglot').mkdir(parents=True)  # No archives: not a TFDS folder.
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # As if not installed.
  with pytest.raises(errors.DataError) as e:
    omniglot.load('train', str(tmp_path / 'data'), str(tmp_path / 'cache'))
  assert str(e.value).startswith(f'{tmp_path / "tfds" / "omniglot"} is a TFDS-prepared Omniglot')
  assert "needs tensorflow_datasets: pip install 'fsl_jax[tfds]'" in str(e.value)
