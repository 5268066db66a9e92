"""tieredImageNet (Ren et al. 2018): 608 ImageNet classes under 34 superclasses,
split by superclass into 351 / 97 / 160 classes (20 / 6 / 8 superclasses),
779,165 84x84 RGB images, between 732 and 1300 per class.

The files are those of the authors' release, in `<data_dir>/tiered_imagenet/`:
`<split>_images_png.pkl` (a list of PNG-encoded images, each a uint8 array of
the PNG's bytes) and `<split>_labels.pkl` (a dict with `label_specific`, one
class index per image, `label_general`, one superclass index per image, and
`label_specific_str`, `label_general_str`, their names). Pickles can run code
when loaded: only load files from a source you trust.

As uint8 the three splits take about 16.5 GB, more than this machine's memory
and most accelerators'. So a split is decoded once, over all cores, into a
memory-mapped cache file: the images sorted by class (file order within a
class) in one `[N, 84, 84, 3]` array, and each class's start row. Training and
evaluation read only the rows an episode samples (`episode_sampling='host'`,
which `HostEpisodes` prefetches in background threads). Images that are not
84x84 are resized to it with Pillow's Lanczos filter.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import pickle
import tempfile

import numpy as np
from absl import logging
from PIL import Image

from fsl_jax.data import cache as cache_lib
from fsl_jax.data import errors
from fsl_jax.data.dataset import FlatDataset

NAME = 'tiered_imagenet'
SPLITS = ('train', 'val', 'test')
IMAGE_SIZE = 84
_CACHE_FORMAT = 1
_CHUNK = 4096  # Images decoded per batch of work (bounds the decoded bytes held at once).
_SAMPLED_ROWS = 64  # Rows hashed to check a cached split when it is opened.


def load(split: str, data_dir: str | None = None, cache_dir: str | None = None,
         download: bool = False) -> FlatDataset:
  """Returns a tieredImageNet split, memory-mapped from the cache."""
  if split not in SPLITS:
    raise errors.DataError(f'Unknown tieredImageNet split {split!r}; expected one of {SPLITS}.')
  root = _root(data_dir, download)
  images_path = os.path.join(root, f'{split}_images_png.pkl')
  labels_path = os.path.join(root, f'{split}_labels.pkl')
  missing = [p for p in (images_path, labels_path) if not os.path.isfile(p)]
  if missing:
    raise errors.DatasetNotFoundError(
      f'tieredImageNet {split} split: {", ".join(missing)} not found. ' + _HELP)
  key = cache_lib.listing_fingerprint(root, [os.path.basename(images_path),
                                             os.path.basename(labels_path)])
  folder = os.path.join(cache_lib.root(cache_dir), NAME, f'v{_CACHE_FORMAT}-{key}')
  dataset = _read(folder, split)
  if dataset is None:
    logging.info('Decoding the tieredImageNet %s split into %s, once (minutes).', split, folder)
    _write(folder, split, images_path, labels_path)
    dataset = _read(folder, split)
    if dataset is None:
      raise errors.DataError(f'The tieredImageNet cache in {folder} could not be read back '
                             'after writing it; is the disk full?')
  return dataset


_HELP = ('Expected <data_dir>/tiered_imagenet/{train,val,test}_images_png.pkl and '
         '{train,val,test}_labels.pkl (the release of Ren et al. 2018); pass '
         f'--config.data_dir=DIR or set ${cache_lib.ENV_DATA_DIR}.')


def _root(data_dir: str | None, download: bool) -> str:
  return cache_lib.dataset_folder(data_dir, NAME, 'tieredImageNet', _HELP, download)


def _unpickle(path: str):
  """Loads a pickle written by Python 3 or, as the release's are, by Python 2."""
  try:
    with open(path, 'rb') as f:
      try:
        return pickle.load(f)
      except UnicodeDecodeError:
        f.seek(0)
        return pickle.load(f, encoding='latin1')
  except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError,
          ValueError) as e:
    raise errors.CorruptDatasetError(
      f'{path} is not a readable pickle ({type(e).__name__}: {e}); download it again.') from None


def _labels(path: str, count: int, images_path: str) -> tuple[np.ndarray, tuple[str, ...]]:
  labels = _unpickle(path)
  keys = ('label_specific', 'label_specific_str')
  if not isinstance(labels, dict) or not all(k in labels for k in keys):
    found = sorted(labels) if isinstance(labels, dict) else type(labels).__name__
    raise errors.CorruptDatasetError(
      f'{path} should hold a dict with label_specific and label_specific_str; found {found}.')
  specific = np.asarray(labels['label_specific'])
  names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                for n in labels['label_specific_str'])
  if specific.ndim != 1 or specific.dtype.kind not in 'iu' or len(specific) != count:
    raise errors.CorruptDatasetError(
      f'{path}: label_specific should hold one class index per image of {images_path} '
      f'({count}), got {specific.dtype} {list(specific.shape)}.')
  if count and (specific.min() < 0 or specific.max() >= len(names)):
    raise errors.CorruptDatasetError(
      f'{path}: label_specific indexes {len(names)} class names, but holds values from '
      f'{specific.min()} to {specific.max()}.')
  sizes = np.bincount(specific, minlength=len(names))
  if (sizes == 0).any():
    raise errors.CorruptDatasetError(
      f'{path}: classes {[names[i] for i in np.flatnonzero(sizes == 0)[:5]]} have no images.')
  return specific.astype(np.int64), names


def _decode_png(payload, index: int, path: str):
  try:
    data = payload.tobytes() if isinstance(payload, np.ndarray) else bytes(payload)
    with Image.open(io.BytesIO(data)) as img:
      img = img.convert('RGB')
      if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
      return np.asarray(img, np.uint8)
  except (OSError, ValueError, TypeError, Image.DecompressionBombError) as e:
    return errors.CorruptDatasetError(f'{path}: image {index} cannot be decoded ({e}).')


def _write(folder: str, split: str, images_path: str, labels_path: str) -> None:
  """Decodes a split into `<split>.npy` (sorted by class) and `<split>.json`, atomically."""
  encoded = _unpickle(images_path)
  if not isinstance(encoded, (list, tuple, np.ndarray)):
    raise errors.CorruptDatasetError(
      f'{images_path} should hold a list of PNG-encoded images; found {type(encoded).__name__}.')
  labels, names = _labels(labels_path, len(encoded), images_path)
  order = np.argsort(labels, kind='stable')
  offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=len(names)))])
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise errors.DataError(f'Cannot create the cache folder {folder} ({e.strerror}); set '
                           f'--config.cache_dir or ${cache_lib.ENV_CACHE_DIR}.') from None
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.tmp-{split}-', suffix='.npy')
  os.close(fd)
  try:
    out = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8,
                                    shape=(len(encoded), IMAGE_SIZE, IMAGE_SIZE, 3))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
      for start in range(0, len(order), _CHUNK):
        rows = order[start:start + _CHUNK]
        decoded = list(pool.map(lambda i: _decode_png(encoded[i], int(i), images_path), rows))
        bad = [d for d in decoded if isinstance(d, Exception)]
        if bad:
          raise errors.CorruptDatasetError(
            f'{len(bad)} or more images cannot be decoded, e.g. {bad[0]} Download the file '
            'again.')
        out[start:start + len(rows)] = np.stack(decoded)
    out.flush()
    meta = {'shape': list(out.shape), 'offsets': offsets.tolist(), 'class_names': list(names),
            'sampled_sha256': _sampled_sha256(out)}
    del out
    os.replace(tmp, os.path.join(folder, f'{split}.npy'))
    with open(tmp + '.json', 'w') as f:
      json.dump(meta, f)
    os.replace(tmp + '.json', os.path.join(folder, f'{split}.json'))
  except OSError as e:
    for path in (os.path.join(folder, f'{split}.npy'), os.path.join(folder, f'{split}.json')):
      if os.path.exists(path):
        os.remove(path)
    raise errors.DataError(f'Cannot write the tieredImageNet cache to {folder} ({e.strerror}); '
                           f'free some space or set --config.cache_dir.') from None
  finally:
    for path in (tmp, tmp + '.json'):
      if os.path.exists(path):
        os.remove(path)


def _sampled_sha256(images: np.ndarray) -> str:
  """A hash of evenly spaced rows (and the last): cheap to check on every open."""
  digest = hashlib.sha256()
  rows = np.unique(np.linspace(0, len(images) - 1, _SAMPLED_ROWS).astype(np.int64))
  for row in rows:
    digest.update(np.ascontiguousarray(images[row]).tobytes())
  return digest.hexdigest()


def _read(folder: str, split: str) -> FlatDataset | None:
  meta_path, array_path = (os.path.join(folder, f'{split}.{ext}') for ext in ('json', 'npy'))
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    images = np.load(array_path, mmap_mode='r', allow_pickle=False)
    if (images.dtype != np.uint8 or list(images.shape) != meta['shape']
        or _sampled_sha256(images) != meta['sampled_sha256']):
      raise ValueError('its pixels do not match its manifest')
    return FlatDataset(images, np.asarray(meta['offsets'], np.int64),
                       tuple(meta['class_names']))
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning('The tieredImageNet cache of split %s in %s is unreadable (%s); decoding '
                    'it again.', split, folder, e)
    for path in (meta_path, array_path):
      if os.path.exists(path):
        os.remove(path)
    return None
