"""CIFAR-FS and FC100: few-shot splits of CIFAR-100's 100 classes of 600 32x32 images.

  * CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 classes chosen at random.
  * FC100 (Oreshkin et al. 2018): split by superclass, 12 / 4 / 4 superclasses
    (60 / 20 / 20 classes), so that test classes share no superclass with the
    training classes.

The class lists are the published ones, kept as data files in `splits/` (their
sources: `splits/README.md`). Each class has its 500 training and 100 test
images of CIFAR-100 (training images first, each part in file order); classes
are in CIFAR-100's label order.

CIFAR-100 is read from, in this order:
  * `<data_dir>/cifar100/cifar-100-python.tar.gz`, the standard download, or
    the folder `cifar-100-python/` it extracts to (pickles `train`, `test`,
    `meta`);
  * TFDS's prepared `cifar100` (`tfds.builder('cifar100', data_dir=D)` with D
    one of `<data_dir>/tensorflow_datasets`, `<data_dir>`, `$TFDS_DATA_DIR`,
    `~/tensorflow_datasets`).
It is decoded once into the cache (`fsl_jax.data.cache`) as one `[100, 600, 32,
32, 3]` array, keyed by the source's fingerprint; both datasets select from it.
"""

from __future__ import annotations

import functools
import os
import pickle
import tarfile

import numpy as np
from absl import logging

from fsl_jax.data import cache as cache_lib
from fsl_jax.data import errors
from fsl_jax.data.dataset import ClassMajorDataset

SPLITS = ('train', 'val', 'trainval', 'test')
NUM_CLASSES, PER_CLASS, IMAGE_SIZE = 100, 600, 32
ARCHIVE = 'cifar-100-python.tar.gz'
FOLDER = 'cifar-100-python'
_CACHE_FORMAT = 1
_SPLITS_DIR = os.path.join(os.path.dirname(__file__), 'splits')


@functools.cache
def split_names(dataset: str, split: str) -> tuple[str, ...]:
  """The published class list of `split` (`train`/`val`/`test`): fine names for
  CIFAR-FS, superclass names for FC100."""
  with open(os.path.join(_SPLITS_DIR, f'{dataset}_{split}.txt')) as f:
    return tuple(line.strip() for line in f if line.strip())


def load_cifar_fs(split: str, data_dir: str | None = None, cache_dir: str | None = None,
                  download: bool = False) -> ClassMajorDataset:
  """A CIFAR-FS split as a class-major uint8 dataset `[classes, 600, 32, 32, 3]`."""
  return _load('cifar_fs', split, data_dir, cache_dir, download)


def load_fc100(split: str, data_dir: str | None = None, cache_dir: str | None = None,
               download: bool = False) -> ClassMajorDataset:
  """An FC100 split as a class-major uint8 dataset `[classes, 600, 32, 32, 3]`."""
  return _load('fc100', split, data_dir, cache_dir, download)


def _load(dataset, split, data_dir, cache_dir, download) -> ClassMajorDataset:
  del download  # CIFAR-100 comes from its archive or TFDS, never fetched here.
  if split not in SPLITS:
    raise errors.DataError(f'Unknown {dataset} split {split!r}; expected one of {SPLITS}.')
  full = load_cifar100(data_dir, cache_dir)
  parts = ('train', 'val') if split == 'trainval' else (split,)
  names = full.class_names
  wanted = {n for p in parts for n in split_names(dataset, p)}
  # CIFAR-FS lists classes; FC100 lists superclasses.
  group = (lambda n: n) if dataset == 'cifar_fs' else _coarse_of(names).__getitem__
  rows = [i for i, n in enumerate(names) if group(n) in wanted]
  return ClassMajorDataset(full.images[rows], tuple(names[i] for i in rows))


def _coarse_of(names: tuple[str, ...]) -> dict[str, str]:
  with open(os.path.join(_SPLITS_DIR, 'cifar100_coarse_to_fine.txt')) as f:
    table = {}
    for line in f:
      coarse, fines = line.split(':')
      table.update({fine: coarse.strip() for fine in fines.split()})
  missing = [n for n in names if n not in table]
  if missing:
    raise errors.CorruptDatasetError(f'CIFAR-100 classes with no known superclass: {missing}.')
  return table


def load_cifar100(data_dir: str | None = None, cache_dir: str | None = None) -> ClassMajorDataset:
  """All of CIFAR-100, class-major: `[100, 600, 32, 32, 3]`, fine names in label order."""
  source, key, decode = _find_source(data_dir)
  folder = os.path.join(cache_lib.root(cache_dir), 'cifar100', f'v{_CACHE_FORMAT}-{key}')

  def decode_logged():
    logging.info('Decoding CIFAR-100 from %s into %s, once.', source, folder)
    return decode()

  return cache_lib.load_or_decode(folder, 'all', 'CIFAR-100', decode_logged)


def _find_source(data_dir):
  """`(description, cache key, decode)` of the first CIFAR-100 copy found."""
  root = cache_lib.data_root(data_dir)
  searched = []
  if root:
    base = os.path.join(root, 'cifar100')
    archive, folder = os.path.join(base, ARCHIVE), os.path.join(base, FOLDER)
    searched += [archive, folder]
    if os.path.isfile(archive):
      key = 'python-' + cache_lib.content_fingerprint([archive])
      return archive, key, functools.partial(_decode_archive, archive)
    if os.path.isdir(folder):
      files = [os.path.join(FOLDER, n) for n in ('train', 'test', 'meta')]
      _require(base, files)
      key = 'python-' + cache_lib.content_fingerprint(os.path.join(base, f) for f in files)
      return folder, key, functools.partial(_decode_folder, folder)
  for tfds_dir in cache_lib.tfds_dirs(root):
    searched.append(os.path.join(tfds_dir, 'cifar100'))
    prepared = cache_lib.tfds_prepared(tfds_dir, 'cifar100', 'CIFAR-100',
                                       'put the python archive cifar-100-python.tar.gz in '
                                       'DIR/cifar100/ instead')
    if prepared:
      builder, key = prepared
      return builder.data_dir, key, functools.partial(_decode_tfds, builder)
  raise errors.DatasetNotFoundError(
    f'CIFAR-100 not found; looked for {", ".join(searched)}. Put {ARCHIVE} (from '
    'https://www.cs.toronto.edu/~kriz/cifar.html) in DIR/cifar100/ and pass '
    f'--config.data_dir=DIR (or set ${cache_lib.ENV_DATA_DIR}), or prepare TFDS\'s '
    "cifar100 (tfds.builder('cifar100', data_dir=...).download_and_prepare()).")


def _require(base, files):
  missing = [f for f in files if not os.path.isfile(os.path.join(base, f))]
  if missing:
    raise errors.DatasetNotFoundError(
      f'{base} lacks {", ".join(missing)}; extract the complete {ARCHIVE} there.')


def _decode_archive(path: str) -> ClassMajorDataset:
  members = {}
  try:
    with tarfile.open(path, 'r:gz') as tar:
      for name in ('train', 'test', 'meta'):
        try:
          member = tar.extractfile(f'{FOLDER}/{name}')
        except KeyError:
          member = None
        if member is None:
          raise errors.CorruptDatasetError(
            f'{path} has no {FOLDER}/{name}; is it the CIFAR-100 python archive?')
        members[name] = _unpickle(member.read(), f'{path}:{FOLDER}/{name}')
  except (tarfile.TarError, EOFError, OSError) as e:
    raise errors.CorruptDatasetError(
      f'{path} is not a readable tar.gz archive ({e}); download it again.') from None
  return _class_major(members, path)


def _decode_folder(folder: str) -> ClassMajorDataset:
  members = {}
  for name in ('train', 'test', 'meta'):
    path = os.path.join(folder, name)
    with open(path, 'rb') as f:
      members[name] = _unpickle(f.read(), path)
  return _class_major(members, folder)


def _unpickle(payload: bytes, where: str) -> dict:
  try:
    value = pickle.loads(payload, encoding='bytes')
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise errors.CorruptDatasetError(f'{where} is not a readable pickle ({e}).') from None
  if not isinstance(value, dict):
    raise errors.CorruptDatasetError(f'{where} should hold a dict, found {type(value).__name__}.')
  return {k.decode() if isinstance(k, bytes) else k: v for k, v in value.items()}


def _class_major(members: dict, source: str) -> ClassMajorDataset:
  """`[100, 600, 32, 32, 3]` from CIFAR-100's `train`, `test` and `meta` pickles."""
  meta = members['meta']
  if 'fine_label_names' not in meta:
    raise errors.CorruptDatasetError(f'{source}: meta has no fine_label_names.')
  names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta['fine_label_names'])
  images, labels = [], []
  for part in ('train', 'test'):
    d = members[part]
    if 'data' not in d or 'fine_labels' not in d:
      raise errors.CorruptDatasetError(f'{source}: {part} lacks data or fine_labels.')
    data = np.asarray(d['data'])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE ** 2:
      raise errors.CorruptDatasetError(
        f'{source}: {part} data should be uint8 [N, 3072], got {data.dtype} {list(data.shape)}.')
    images.append(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))
    labels.append(np.asarray(d['fine_labels'], np.int64))
  return group_by_label(np.concatenate(images), np.concatenate(labels), names, source)


def group_by_label(images: np.ndarray, labels: np.ndarray, names: tuple[str, ...],
                   source: str) -> ClassMajorDataset:
  """Class-major from flat images and labels; every class must have `PER_CLASS`."""
  if len(names) != NUM_CLASSES or len(labels) != len(images):
    raise errors.CorruptDatasetError(
      f'{source}: expected {NUM_CLASSES} classes with one label per image, got {len(names)} '
      f'class names, {len(images)} images and {len(labels)} labels.')
  counts = np.bincount(labels, minlength=NUM_CLASSES)
  if len(counts) != NUM_CLASSES or (counts != PER_CLASS).any():
    bad = [(names[i] if i < len(names) else i, int(c)) for i, c in enumerate(counts)
           if c != PER_CLASS][:5]
    raise errors.CorruptDatasetError(
      f'{source}: every CIFAR-100 class should have {PER_CLASS} images (500 train + 100 '
      f'test); found {bad}. The copy is incomplete: download it again.')
  order = np.argsort(labels, kind='stable')
  grouped = np.ascontiguousarray(images[order].reshape(NUM_CLASSES, PER_CLASS, IMAGE_SIZE,
                                                       IMAGE_SIZE, 3))
  return ClassMajorDataset(grouped, names)


def _decode_tfds(builder) -> ClassMajorDataset:
  """Reads both TFDS splits; sorting by the `id` feature (`train_00042`) restores the
  order of the python archive, so both sources give the same array."""
  import tensorflow_datasets as tfds

  names = tuple(builder.info.features['label'].names)
  images, labels, ids = [], [], []
  for part in ('train', 'test'):
    batch = tfds.as_numpy(builder.as_dataset(split=part, batch_size=-1, shuffle_files=False))
    images.append(batch['image'])
    labels.append(batch['label'])
    ids += [i.decode() if isinstance(i, bytes) else str(i) for i in batch['id']]
  order = sorted(range(len(ids)), key=lambda i: (ids[i].split('_')[0] != 'train', ids[i]))
  return group_by_label(np.concatenate(images)[order].astype(np.uint8),
                        np.concatenate(labels)[order].astype(np.int64), names, builder.data_dir)
