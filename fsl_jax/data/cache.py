"""Decoded splits on disk: one uint8 array per split, verified when it is read.

Every dataset decodes its source files once into a cache folder (never inside
`data_dir`, which may be read-only) keyed by a fingerprint of the source, so a
changed source is decoded again. A split is two files:

  * `<split>.npy`: the class-major uint8 images `[classes, examples, H, W, C]`;
  * `<split>.json`: the shape, the sha256 of the pixels and the class names.

Both are written under temporary names and renamed into place, the `.json` last,
so a split with a `.json` is complete and an interrupted decode leaves nothing
that is read back. A split whose pixels do not match its `.json` is removed with
a warning and decoded again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable

import numpy as np
from absl import logging

from fsl_jax.data import errors
from fsl_jax.data.dataset import ClassMajorDataset

ENV_CACHE_DIR = 'FSL_JAX_CACHE_DIR'
ENV_DATA_DIR = 'FSL_JAX_DATA_DIR'


def root(cache_dir: str | None) -> str:
  """The cache root: `cache_dir`, else `$FSL_JAX_CACHE_DIR`, else `~/.cache/fsl_jax`."""
  return os.path.expanduser(cache_dir or os.environ.get(ENV_CACHE_DIR) or '~/.cache/fsl_jax')


def data_root(data_dir: str | None) -> str | None:
  """The data root: `data_dir`, else `$FSL_JAX_DATA_DIR`, else None."""
  data_dir = data_dir or os.environ.get(ENV_DATA_DIR)
  return os.path.expanduser(data_dir) if data_dir else None


def dataset_folder(data_dir: str | None, name: str, label: str, help_text: str,
                   download: bool = False) -> str:
  """`<data root>/<name>`, or a `DatasetNotFoundError` that says where to put it.

  For datasets that cannot be downloaded automatically (ImageNet's terms of
  access); `download=True` only adds that to the message.
  """
  data_root_dir = data_root(data_dir)
  if data_root_dir is None:
    raise errors.DatasetNotFoundError(
      f'{label} needs a data dir: pass --config.data_dir=DIR (or set ${ENV_DATA_DIR}), where '
      f'DIR/{name}/ holds it. {help_text}')
  folder = os.path.join(data_root_dir, name)
  if not os.path.isdir(folder):
    why = ' It cannot be downloaded automatically (ImageNet terms of access).' if download else ''
    raise errors.DatasetNotFoundError(f'{label} not found: {folder} does not exist.{why} '
                                      f'{help_text}')
  return folder


def tfds_dirs(root: str | None) -> list[str]:
  """Where a TFDS-prepared dataset may be, in order: `<root>/tensorflow_datasets`,
  `<root>`, `$TFDS_DATA_DIR`, `~/tensorflow_datasets`."""
  dirs = ([os.path.join(root, 'tensorflow_datasets'), root] if root else []) + [
    os.environ.get('TFDS_DATA_DIR'), os.path.expanduser('~/tensorflow_datasets')]
  return list(dict.fromkeys(d for d in dirs if d))


def tfds_prepared(tfds_dir: str, name: str, label: str, instead: str):
  """`(builder, cache key)` of TFDS's dataset `name` prepared in `tfds_dir`, or None.

  A folder counts as prepared when it holds `<name>/<version>/dataset_info.json`.
  The key fingerprints the prepared files' listing.

  Raises:
    DataError: the dataset is there but TFDS or TensorFlow (which TFDS reads its
      files with) is not installed; `instead` says what else to provide.
  """
  if not glob.glob(os.path.join(glob.escape(tfds_dir), name, '*', 'dataset_info.json')):
    return None
  try:
    import tensorflow  # noqa: F401  (TFDS reads its prepared files with tf.data)
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise errors.DataError(
      f'{os.path.join(tfds_dir, name)} is a TFDS-prepared {label}, and reading it needs '
      f"{e.name}: pip install 'fsl_jax[tfds]' (TensorFlow and TFDS), or {instead}.") from None
  builder = tfds.builder(name, data_dir=tfds_dir)
  if not builder.is_prepared():
    return None
  files = sorted(os.path.relpath(os.path.join(d, f), tfds_dir)
                 for d, _, fs in os.walk(builder.data_dir) for f in fs)
  return builder, 'tfds-' + listing_fingerprint(tfds_dir, files)


def content_fingerprint(paths: Iterable[str]) -> str:
  """A short hash of the bytes of `paths`, in the given order."""
  digest = hashlib.sha256()
  for path in paths:
    with open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  return digest.hexdigest()[:16]


def listing_fingerprint(root_dir: str, relative_paths: Iterable[str]) -> str:
  """A short hash of the names, sizes and modification times of many files.

  For sources of tens of thousands of files, where hashing every byte on each
  run would cost more than the run's startup; any edit, addition or removal
  changes it.
  """
  digest = hashlib.sha256()
  for rel in relative_paths:
    st = os.stat(os.path.join(root_dir, rel))
    digest.update(f'{rel}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  return digest.hexdigest()[:16]


def pixels_sha256(images: np.ndarray) -> str:
  digest = hashlib.sha256()
  flat = np.ascontiguousarray(images).reshape(-1)
  step = 1 << 26
  for start in range(0, flat.size, step):
    digest.update(memoryview(flat[start:start + step]))
  return digest.hexdigest()


def read(folder: str, split: str, label: str) -> ClassMajorDataset | None:
  """The cached split, or None when it is missing; a corrupt one is removed."""
  meta_path, array_path = _paths(folder, split)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    images = np.load(array_path, allow_pickle=False)
    names = tuple(str(n) for n in meta['class_names'])
    if (images.dtype != np.uint8 or list(images.shape) != meta['shape']
        or len(names) != images.shape[0] or pixels_sha256(images) != meta['sha256']):
      raise ValueError('its pixels do not match its manifest')
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning('The %s cache of split %s in %s is unreadable (%s); decoding it again.',
                    label, split, folder, e)
    for path in (meta_path, array_path):
      if os.path.exists(path):
        os.remove(path)
    return None
  return ClassMajorDataset(images, names)


def write(folder: str, split: str, dataset: ClassMajorDataset) -> None:
  """Writes one split atomically (pixels first, then the manifest)."""
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise errors.DataError(
      f'Cannot create the cache folder {folder} ({e.strerror}); set --config.cache_dir '
      f'or ${ENV_CACHE_DIR} to a writable folder.'
    ) from None
  meta_path, array_path = _paths(folder, split)
  meta = {'shape': list(dataset.images.shape), 'sha256': pixels_sha256(dataset.images),
          'class_names': list(dataset.class_names)}
  temporaries = []
  try:
    for path, write_to in ((array_path, lambda f: np.save(f, dataset.images, allow_pickle=False)),
                           (meta_path, lambda f: f.write(json.dumps(meta).encode()))):
      fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.tmp-{split}-')
      temporaries.append(tmp)
      with os.fdopen(fd, 'wb') as f:
        write_to(f)
      os.replace(tmp, path)
  except OSError as e:
    for path in (meta_path, array_path):
      if os.path.exists(path):
        os.remove(path)
    raise errors.DataError(
      f'Cannot write the cache of split {split} to {folder} ({e.strerror}); free some '
      f'space or set --config.cache_dir or ${ENV_CACHE_DIR} to another folder.'
    ) from None
  finally:
    for tmp in temporaries:
      if os.path.exists(tmp):
        os.remove(tmp)


def load_or_decode(folder: str, split: str, label: str, decode) -> ClassMajorDataset:
  """The cached split; `decode()` builds and caches it when it is missing."""
  dataset = read(folder, split, label)
  if dataset is None:
    dataset = decode()
    write(folder, split, dataset)
  return dataset


def _paths(folder: str, split: str) -> tuple[str, str]:
  return os.path.join(folder, f'{split}.json'), os.path.join(folder, f'{split}.npy')
