"""Omniglot (Lake et al. 2015) under the standard few-shot protocol.

Protocol (Vinyals et al. 2016; Snell et al. 2017): images resized to 28x28, every
character rotated by 0/90/180/270 degrees gives four classes, and the characters
are split 1028 train / 172 validation / 423 test (4112 / 688 / 1692 classes).

The split is derived from the two upstream archives alone: background characters
then evaluation characters, each ordered by alphabet folder and character number;
the first 1200 are train+val (validation: the five alphabets in `VAL_ALPHABETS`),
the last 423 are test. `tests/test_omniglot.py` checks the result against the
published split files.

Omniglot is read from, in this order:
  * the upstream archives `images_background.zip` and `images_evaluation.zip` in
    `<data_dir>/omniglot/` (or in the cache, where `download=True` puts them);
  * TFDS's prepared `omniglot` (`tfds.builder('omniglot', data_dir=D)` with D
    one of `<data_dir>/tensorflow_datasets`, `<data_dir>`, `$TFDS_DATA_DIR`,
    `~/tensorflow_datasets`): its `train` split holds the background characters
    and `test` the evaluation ones (`small1`/`small2` are unused). TFDS keeps
    each file's PNG bytes, alphabet, character and global character id, but not
    the drawer number `DD`. That is recovered from the file order, which TFDS
    sorts by the md5 of the split name and each example's key (built from the
    file name), and the whole order is checked against it. Both sources then give
    the same arrays and class names (a test checks it).

Pixels are stored inverted (stroke 255, background 0), resized from 105x105 with
a Lanczos filter after converting the 1-bit PNG to 8-bit grey. Each split is
decoded once into a class-major uint8 array `[classes, 20, 28, 28, 1]` in a cache
directory (never inside `data_dir`), keyed by a fingerprint of the source; later
runs load it in about a second.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence

import numpy as np
from absl import logging
from PIL import Image

from fsl_jax.data import cache as cache_lib
from fsl_jax.data import errors
from fsl_jax.data.dataset import ClassMajorDataset

NAME = 'omniglot'
IMAGE_SIZE = 28
EXAMPLES_PER_CLASS = 20
ROTATIONS = (0, 90, 180, 270)
NUM_TRAINVAL_CHARACTERS = 1200
VAL_ALPHABETS = (
  'Armenian',
  'Bengali',
  'Early_Aramaic',
  'Hebrew',
  'Mkhedruli_(Georgian)',
)
SPLITS = ('train', 'val', 'trainval', 'test')

# The upstream release. Checksums are those TFDS pins for these URLs; they are
# only enforced on files this module downloads itself. A local copy given by the
# user (e.g. re-zipped, pixel-identical archives) is accepted without them and is
# validated by its zip CRCs and layout instead.
_UPSTREAM = 'https://github.com/brendenlake/omniglot/raw/master/python/'
ARCHIVES = {
  'images_background': (
    9464212,
    'ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640',
  ),
  'images_evaluation': (
    6462886,
    '1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee',
  ),
}
_CACHE_FORMAT = 3  # Bump when the decoded pixels or the layout change.
_IMAGE_RE = re.compile(r'^(images_background|images_evaluation)/([^/]+)/character(\d+)/'
                       r'(\d{4})_(\d{2})\.png$')


def load(split: str, data_dir: str | None = None, cache_dir: str | None = None,
         download: bool = False) -> ClassMajorDataset:
  """Returns an Omniglot split as a class-major uint8 dataset.

  Args:
    split: one of 'train', 'val', 'trainval', 'test'.
    data_dir: root holding `omniglot/images_{background,evaluation}.zip` or a
      TFDS-prepared `omniglot`; defaults to `$FSL_JAX_DATA_DIR`.
    cache_dir: where decoded arrays are cached; defaults to
      `$FSL_JAX_CACHE_DIR` or `~/.cache/fsl_jax`.
    download: fetch the upstream archives into the cache when neither source
      is found.

  Returns:
    A `ClassMajorDataset` with images `[classes, 20, 28, 28, 1]` and the class
    names `Alphabet/characterNN/rotDDD`.
  """
  if split not in SPLITS:
    raise errors.DataError(f'Unknown Omniglot split {split!r}; expected one of {SPLITS}.')
  cache = cache_lib.root(cache_dir)
  source, key, decode = _find_source(data_dir, cache, download)
  folder = os.path.join(cache, NAME, f'v{_CACHE_FORMAT}-{key}')
  dataset = cache_lib.read(folder, split, 'Omniglot')
  if dataset is None:
    logging.info('Decoding Omniglot from %s into %s (once; a few seconds).', source, folder)
    decoded = _split_datasets(decode(), source)
    for name, split_dataset in decoded.items():  # Every split: decoding is all-or-nothing.
      cache_lib.write(folder, name, split_dataset)
    dataset = decoded[split]
  if dataset.num_classes == 0:
    raise errors.CorruptDatasetError(
      f'The Omniglot {split} split is empty: {source} holds too few characters for '
      'the Vinyals split (1623 expected). Use the full dataset.'
    )
  return dataset


def character_splits(characters: Sequence[tuple[str, str, int]]) -> dict[str, list]:
  """Splits `(set, alphabet, number)` characters into train/val/test (Vinyals).

  Args:
    characters: every character of both archives, in any order.

  Returns:
    A dict from split name to the characters of that split, in canonical order.
  """
  order = {'images_background': 0, 'images_evaluation': 1}
  ordered = sorted(characters, key=lambda c: (order[c[0]], c[1], c[2]))
  trainval, test = ordered[:NUM_TRAINVAL_CHARACTERS], ordered[NUM_TRAINVAL_CHARACTERS:]
  return {
    'train': [c for c in trainval if c[1] not in VAL_ALPHABETS],
    'val': [c for c in trainval if c[1] in VAL_ALPHABETS],
    'trainval': trainval,
    'test': test,
  }


def class_name(alphabet: str, number: int, rotation: int) -> str:
  return f'{alphabet}/character{number:02d}/rot{rotation:03d}'


def _find_source(data_dir: str | None, cache: str, download: bool):
  """`(description, cache key, decode)` of the first Omniglot copy found."""
  root = cache_lib.data_root(data_dir)
  folders = ([os.path.join(root, NAME)] if root else []) + [os.path.join(cache, NAME, 'downloads')]
  for folder in folders:
    archives = {a: os.path.join(folder, a + '.zip') for a in ARCHIVES}
    if all(os.path.isfile(p) for p in archives.values()):
      return folder, _fingerprint(archives), functools.partial(_decode_archives, archives)
  searched = []
  for tfds_dir in cache_lib.tfds_dirs(root):
    searched.append(os.path.join(tfds_dir, NAME))
    prepared = cache_lib.tfds_prepared(tfds_dir, NAME, 'Omniglot',
                                       'put the upstream images_background.zip and '
                                       'images_evaluation.zip in DIR/omniglot/ instead')
    if prepared:
      builder, key = prepared
      return builder.data_dir, key, functools.partial(_decode_tfds, builder)
  if download:
    archives = _download(folders[-1])
    return folders[-1], _fingerprint(archives), functools.partial(_decode_archives, archives)
  expected = ', '.join(a + '.zip' for a in ARCHIVES)
  raise errors.DatasetNotFoundError(
    f'Omniglot archives ({expected}) not found in: {", ".join(folders)}; no TFDS-prepared '
    f'omniglot in: {", ".join(searched)}.\n'
    'Point the project at a copy with --config.data_dir=DIR or the '
    'FSL_JAX_DATA_DIR environment variable, where DIR/omniglot/ holds the two '
    f'upstream zips ({_UPSTREAM}) or DIR/tensorflow_datasets/ TFDS\'s prepared omniglot '
    "(tfds.builder('omniglot', data_dir=...).download_and_prepare()), or set "
    '--config.download=True to fetch the zips.'
  )


def _download(target: str) -> dict[str, str]:
  """Fetches the upstream archives into `target`, verifying size and sha256."""
  os.makedirs(target, exist_ok=True)
  paths = {}
  for archive, (size, sha256) in ARCHIVES.items():
    path = os.path.join(target, archive + '.zip')
    logging.info('Downloading %s%s.zip', _UPSTREAM, archive)
    try:
      with urllib.request.urlopen(_UPSTREAM + archive + '.zip', timeout=60) as r:
        payload = r.read()
    except OSError as e:
      raise errors.DatasetNotFoundError(
        f'Could not download Omniglot ({e}). Download {archive}.zip from '
        f'{_UPSTREAM} by hand and pass its folder as data_dir/omniglot.'
      ) from None
    digest = hashlib.sha256(payload).hexdigest()
    if len(payload) != size or digest != sha256:
      raise errors.CorruptDatasetError(
        f'Downloaded {archive}.zip has {len(payload)} bytes and sha256 {digest}; '
        f'expected {size} bytes and {sha256}. Nothing was saved.'
      )
    _atomic_write_bytes(path, payload)
    paths[archive] = path
  return paths


def _fingerprint(archives: dict[str, str]) -> str:
  """A short content hash of the archives, so a changed source invalidates the cache."""
  return cache_lib.content_fingerprint(archives[a] for a in sorted(archives))


def _decode_archives(archives: dict[str, str]) -> dict[tuple, np.ndarray]:
  """`(set, alphabet, number) -> [20, 28, 28]` uint8 from both archives."""
  images = {}
  for archive, path in archives.items():
    try:
      with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()
        if bad is not None:
          raise errors.CorruptDatasetError(f'{path}: member {bad} fails its CRC check; '
                                           're-download the archive.')
        _decode_archive(zf, archive, path, images)
    except zipfile.BadZipFile as e:
      raise errors.CorruptDatasetError(
        f'{path} is not a readable zip archive ({e}); re-download it.'
      ) from None
  return images


def _split_datasets(images: dict[tuple, np.ndarray], source: str) -> dict[str, ClassMajorDataset]:
  """Every split, four rotations per character, from a decoded source's characters."""
  if not images:
    raise errors.CorruptDatasetError(f'No Omniglot images found in {source}.')
  splits = character_splits(list(images))
  datasets = {}
  for split, characters in splits.items():
    pixels = np.zeros((0, EXAMPLES_PER_CLASS, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    if characters:
      pixels = np.stack([
        np.rot90(images[c], k=r // 90, axes=(1, 2)) for c in characters for r in ROTATIONS
      ])
    pixels = pixels[..., None]
    names = [class_name(c[1], c[2], r) for c in characters for r in ROTATIONS]
    datasets[split] = ClassMajorDataset(np.ascontiguousarray(pixels), tuple(names))
  return datasets


def _decode_archive(zf: zipfile.ZipFile, archive: str, path: str, images: dict) -> None:
  members: dict[tuple, list[tuple[int, str]]] = {}
  for name in zf.namelist():
    match = _IMAGE_RE.match(name)
    if match and match.group(1) == archive:
      key = (archive, match.group(2), int(match.group(3)))
      members.setdefault(key, []).append((int(match.group(5)), name))
  if not members:
    raise errors.CorruptDatasetError(
      f'{path} holds no images in the layout {archive}/<Alphabet>/characterNN/'
      'IIII_DD.png; is it the right archive?'
    )
  for key, drawings in members.items():
    if len(drawings) != EXAMPLES_PER_CLASS:
      raise errors.CorruptDatasetError(
        f'{path}: {key[1]}/character{key[2]:02d} has {len(drawings)} images, '
        f'expected {EXAMPLES_PER_CLASS}; the archive is incomplete.'
      )
    images[key] = np.stack([_decode_png(zf.read(n), path, n) for _, n in sorted(drawings)])


def _decode_png(payload: bytes, path: str, member: str) -> np.ndarray:
  try:
    with Image.open(io.BytesIO(payload)) as img:
      grey = img.convert('L').resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
  except (OSError, ValueError) as e:
    raise errors.CorruptDatasetError(f'{path}: cannot decode {member} ({e}).') from None
  return 255 - np.asarray(grey, np.uint8)


# TFDS's omniglot: its split holding each archive's characters.
_TFDS_SPLITS = {'train': 'images_background', 'test': 'images_evaluation'}


def _decode_tfds(builder) -> dict[tuple, np.ndarray]:
  """`(set, alphabet, number) -> [20, 28, 28]` uint8 from TFDS's train and test splits.

  TFDS keeps each upstream PNG's bytes (decoded here as the archives are), but
  not its drawer number; `_drawer_order` recovers it.
  """
  import tensorflow_datasets as tfds

  alphabets = builder.info.features['alphabet'].names
  images = {}
  for part, archive in _TFDS_SPLITS.items():
    batch = tfds.as_numpy(builder.as_dataset(
      split=part, batch_size=-1, shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()},  # The stored PNG bytes.
      read_config=tfds.ReadConfig(interleave_cycle_length=1)))  # In file order.
    where = f'{builder.data_dir} ({part} split)'
    characters: dict[tuple, list[int]] = {}
    for row in range(len(batch['label'])):
      key = (archive, alphabets[int(batch['alphabet'][row])],
             int(batch['alphabet_char_id'][row]) + 1)
      characters.setdefault(key, []).append(row)
    if not characters:
      raise errors.CorruptDatasetError(f'{where} holds no images; prepare it again.')
    for (_, alphabet, number), rows in characters.items():
      ids = {int(batch['label'][r]) for r in rows}
      if len(rows) != EXAMPLES_PER_CLASS or len(ids) != 1:
        raise errors.CorruptDatasetError(
          f'{where}: {alphabet}/character{number:02d} has {len(rows)} images with {len(ids)} '
          f'labels, expected {EXAMPLES_PER_CLASS} with one; prepare it again.')
    order = _drawer_order(part, characters, batch['label'], where)
    for key, rows in order.items():
      member = f'{key[1]}/character{key[2]:02d}'
      images[key] = np.stack([_decode_png(batch['image'][r], where, member) for r in rows])
  return images


def _drawer_order(part: str, characters: dict[tuple, list[int]], labels: np.ndarray,
                  where: str) -> dict[tuple, list[int]]:
  """Each character's rows in drawer order (`IIII_01.png` first), as in the archives.

  TFDS writes a split sorted by md5(split name + key), the key being
  `<Alphabet>_<char - 1>_<IIII>_<DD>.png`, so a character's rows in file order
  are its drawers in the order of their keys' hashes. The recovered keys must put
  the whole split in hash order; otherwise (another key scheme) the file order is
  kept, with a warning.
  """
  order, row_hash = {}, {}
  for key, rows in characters.items():
    _, alphabet, number = key
    file_id = int(labels[rows[0]]) + 1  # The global character id IIII.
    by_hash = sorted(
      (_key_hash(part, f'{alphabet}_{number - 1}_{file_id:04d}_{drawer:02d}.png'), drawer)
      for drawer in range(1, EXAMPLES_PER_CLASS + 1))
    row_hash.update((row, h) for row, (h, _) in zip(rows, by_hash, strict=True))
    drawer_of = {row: drawer for row, (_, drawer) in zip(rows, by_hash, strict=True)}
    order[key] = sorted(rows, key=drawer_of.__getitem__)
  hashes = [row_hash[row] for row in sorted(row_hash)]
  if all(a < b for a, b in zip(hashes, hashes[1:], strict=False)):
    return order
  logging.warning('%s is not in the order of its TFDS keys, so the drawer of each image is '
                  'unknown: classes keep the file order, unlike the archives.', where)
  return characters


def _key_hash(salt: str, key: str) -> int:
  return int(hashlib.md5((salt + key).encode()).hexdigest(), 16)


def _atomic_write_bytes(path: str, payload: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(payload)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
