"""Omniglot loading: the Vinyals split, the cache, and clear errors on bad data."""

import os
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


def test_missing_data_names_the_files_and_the_fix(tmp_path):
  with pytest.raises(errors.DatasetNotFoundError) as e:
    omniglot.load('train', str(tmp_path / 'nowhere'), str(tmp_path / 'cache'))
  message = str(e.value)
  assert 'images_background.zip' in message and 'images_evaluation.zip' in message
  assert str(tmp_path / 'nowhere' / 'omniglot') in message and 'data_dir' in message


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
