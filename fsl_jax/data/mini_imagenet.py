"""miniImageNet (Vinyals et al. 2016) with the split of Ravi & Larochelle (2017).

100 ImageNet classes of 600 84x84 RGB images: 64 train, 16 validation and 20 test
classes (`trainval`: the 80 train and validation classes). The files go in
`<data_dir>/mini_imagenet/`, in any of the three layouts users download:

  * `csv`: a flat `images/` folder with the split CSVs (`filename,label` rows,
    label = the synset id), in `splits/ravi/<split>.csv` or `<split>.csv`;
  * `folders`: one folder per split and class, `<split>/<wnid>/*.jpg` (or
    `.jpeg`, `.png`);
  * `pickle`: the caches many repositories distribute,
    `mini-imagenet-cache-<split>.pkl`, each a dict with `image_data` (uint8
    `[N, 84, 84, 3]`) and `class_dict` (`{wnid: [row indices]}`). Pickles can run
    code when loaded: only load files from a source you trust.

Classes are ordered by synset id; a class's images keep the order of its CSV
rows, file names or pickle rows. Images are converted to RGB, and any image that
is not 84x84 is resized to 84x84 with Pillow's Lanczos filter (the aspect ratio
is not kept), so a folder of full-size images works too. A split is decoded once,
over all cores, into the uint8 cache (`fsl_jax.data.cache`) keyed by the layout
and a fingerprint of the source files' names, sizes and modification times.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import io
import os
import pickle

import numpy as np
from absl import logging
from PIL import Image

from fsl_jax.data import cache as cache_lib
from fsl_jax.data import errors
from fsl_jax.data.dataset import ClassMajorDataset

NAME = 'mini_imagenet'
IMAGE_SIZE = 84
SPLITS = ('train', 'val', 'trainval', 'test')
SOURCE_SPLITS = {'train': ('train',), 'val': ('val',), 'trainval': ('train', 'val'),
                 'test': ('test',)}
LAYOUTS = ('csv', 'folders', 'pickle')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_CACHE_FORMAT = 1  # Bump when the decoded pixels or the class order change.
_NAMED = 5  # How many missing or bad files an error names.


def load(split: str, data_dir: str | None = None, cache_dir: str | None = None,
         download: bool = False) -> ClassMajorDataset:
  """Returns a miniImageNet split as a class-major uint8 dataset.

  Args:
    split: one of 'train', 'val', 'trainval', 'test'.
    data_dir: the root holding `mini_imagenet/`; defaults to `$FSL_JAX_DATA_DIR`.
    cache_dir: where decoded arrays are cached; defaults to `$FSL_JAX_CACHE_DIR`
      or `~/.cache/fsl_jax`.
    download: not supported (the images are under the ImageNet terms of access);
      setting it only changes the error message when the files are missing.

  Returns:
    A `ClassMajorDataset` with images `[classes, examples, 84, 84, 3]` and the
    synset ids as class names.
  """
  if split not in SPLITS:
    raise errors.DataError(f'Unknown miniImageNet split {split!r}; expected one of {SPLITS}.')
  root = _root(data_dir, download)
  parts = [_load_source_split(root, s, cache_lib.root(cache_dir)) for s in SOURCE_SPLITS[split]]
  if len(parts) == 1:
    return parts[0]
  per_class = min(p.examples_per_class for p in parts)
  if any(p.examples_per_class != per_class for p in parts):
    logging.warning('miniImageNet %s: its splits have %s images per class; keeping the first %d.',
                    split, [p.examples_per_class for p in parts], per_class)
  return ClassMajorDataset(
    np.concatenate([p.images[:, :per_class] for p in parts]),
    tuple(n for p in parts for n in p.class_names))


def detect_layout(root: str, split: str) -> str | None:
  """Which layout holds `split` under `root` (see the module docstring), or None."""
  if os.path.isfile(_pickle_path(root, split)):
    return 'pickle'
  if os.path.isdir(os.path.join(root, 'images')) and _csv_path(root, split):
    return 'csv'
  if os.path.isdir(os.path.join(root, split)):
    return 'folders'
  return None


def _root(data_dir: str | None, download: bool) -> str:
  return cache_lib.dataset_folder(data_dir, NAME, 'miniImageNet', _LAYOUT_HELP, download)


_LAYOUT_HELP = (
  'Expected one of: images/ with splits/ravi/{train,val,test}.csv (or the CSVs beside '
  'images/); {train,val,test}/<wnid>/*.jpg; or mini-imagenet-cache-{train,val,test}.pkl.'
)


def _load_source_split(root: str, split: str, cache: str) -> ClassMajorDataset:
  layout = detect_layout(root, split)
  if layout is None:
    raise errors.DatasetNotFoundError(f'No miniImageNet {split} split in {root}. ' + _LAYOUT_HELP)
  if layout == 'pickle':
    path = _pickle_path(root, split)
    key = cache_lib.listing_fingerprint(root, [os.path.basename(path)])
    decode = lambda: _decode_pickle(path)  # noqa: E731
  else:
    classes = _csv_classes(root, split) if layout == 'csv' else _folder_classes(root, split)
    key = cache_lib.listing_fingerprint(
      root, [f for files in classes.values() for f in files]
      + ([os.path.relpath(_csv_path(root, split), root)] if layout == 'csv' else []))
    decode = lambda: _decode_files(root, classes)  # noqa: E731
  folder = os.path.join(cache, NAME, f'v{_CACHE_FORMAT}-{layout}-{key}')

  def decode_logged():
    logging.info('Decoding the miniImageNet %s split (%s layout) into %s, once.', split, layout,
                 folder)
    return decode()

  return cache_lib.load_or_decode(folder, split, 'miniImageNet', decode_logged)


def _pickle_path(root: str, split: str) -> str:
  return os.path.join(root, f'mini-imagenet-cache-{split}.pkl')


def _csv_path(root: str, split: str) -> str | None:
  for path in (os.path.join(root, 'splits', 'ravi', f'{split}.csv'),
               os.path.join(root, f'{split}.csv')):
    if os.path.isfile(path):
      return path
  return None


def _csv_classes(root: str, split: str) -> dict[str, list[str]]:
  """`{wnid: [images/<file>, ...]}` from a split CSV, checking every file exists."""
  path = _csv_path(root, split)
  classes: dict[str, list[str]] = collections.defaultdict(list)
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  if rows and [c.strip() for c in rows[0]] == ['filename', 'label']:
    rows = rows[1:]
  for number, row in enumerate(rows, start=2):
    if not row:
      continue
    if len(row) != 2 or not row[0].strip() or not row[1].strip():
      raise errors.CorruptDatasetError(
        f'{path}, line {number}: expected "filename,label", got {",".join(row)!r}.')
    classes[row[1].strip()].append(os.path.join('images', row[0].strip()))
  if not classes:
    raise errors.CorruptDatasetError(f'{path} lists no images.')
  missing = [f for files in classes.values() for f in files
             if not os.path.isfile(os.path.join(root, f))]
  if missing:
    raise errors.DatasetNotFoundError(
      f'{len(missing)} of the images {path} lists are not in {os.path.join(root, "images")}, '
      f'e.g. {", ".join(os.path.basename(m) for m in missing[:_NAMED])}. Copy the complete '
      'download, or fix the CSV.')
  return dict(sorted(classes.items()))


def _folder_classes(root: str, split: str) -> dict[str, list[str]]:
  """`{wnid: [<split>/<wnid>/<file>, ...]}` from per-class folders."""
  split_dir = os.path.join(root, split)
  classes = {}
  for wnid in sorted(os.listdir(split_dir)):
    class_dir = os.path.join(split_dir, wnid)
    if not os.path.isdir(class_dir):
      continue
    files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise errors.CorruptDatasetError(
        f'{class_dir} holds no images ({", ".join(IMAGE_EXTENSIONS)}); remove the folder or '
        'fill it.')
    classes[wnid] = [os.path.join(split, wnid, f) for f in files]
  if not classes:
    raise errors.CorruptDatasetError(f'{split_dir} holds no class folders <wnid>/*.jpg.')
  return classes


def _decode_files(root: str, classes: dict[str, list[str]]) -> ClassMajorDataset:
  """Decodes every file over a thread pool (Pillow releases the GIL while decoding)."""
  files = [f for names in classes.values() for f in names]

  def decode(rel):
    try:
      with open(os.path.join(root, rel), 'rb') as f:
        return _to_rgb84(Image.open(io.BytesIO(f.read())))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      return e

  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    decoded = list(pool.map(decode, files, chunksize=64))
  bad = [(f, d) for f, d in zip(files, decoded, strict=True) if isinstance(d, Exception)]
  if bad:
    named = '; '.join(f'{f} ({e})' for f, e in bad[:_NAMED])
    raise errors.CorruptDatasetError(
      f'{len(bad)} miniImageNet images in {root} cannot be decoded: {named}. Replace them with '
      'intact copies from the download.')
  images, start = {}, 0
  for wnid, names in classes.items():
    images[wnid] = decoded[start:start + len(names)]
    start += len(names)
  return _class_major(images, root)


def _decode_pickle(path: str) -> ClassMajorDataset:
  try:
    with open(path, 'rb') as f:
      payload = pickle.load(f)
  except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError,
          IndexError, ValueError) as e:
    raise errors.CorruptDatasetError(
      f'{path} is not a readable pickle ({type(e).__name__}: {e}); download it again.') from None
  if not isinstance(payload, dict) or not {'image_data', 'class_dict'} <= set(payload):
    found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
    raise errors.CorruptDatasetError(
      f'{path} should hold a dict with keys image_data and class_dict; found {found}.')
  data, class_dict = np.asarray(payload['image_data']), payload['class_dict']
  if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
    raise errors.CorruptDatasetError(
      f'{path}: image_data should be uint8 [N, H, W, 3], got {data.dtype} {list(data.shape)}.')
  if not isinstance(class_dict, dict) or not class_dict:
    raise errors.CorruptDatasetError(f'{path}: class_dict should map each wnid to its rows.')
  images = {}
  for wnid in sorted(class_dict):
    rows = np.asarray(class_dict[wnid])
    if rows.ndim != 1 or rows.size == 0 or rows.dtype.kind not in 'iu' or rows.min() < 0 \
        or rows.max() >= len(data):
      raise errors.CorruptDatasetError(
        f'{path}: class_dict[{wnid!r}] should list rows of image_data (0..{len(data) - 1}).')
    if data.shape[1:3] == (IMAGE_SIZE, IMAGE_SIZE):
      images[wnid] = list(data[rows])
    else:
      images[wnid] = [_to_rgb84(Image.fromarray(x)) for x in data[rows]]
  return _class_major(images, path)


def _to_rgb84(img: Image.Image) -> np.ndarray:
  with img:
    img = img.convert('RGB')
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
      img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    return np.asarray(img, np.uint8)


def _class_major(images: dict[str, list[np.ndarray]], source: str) -> ClassMajorDataset:
  """Stacks `{wnid: [images]}`; classes of unequal size are cut to the smallest."""
  sizes = {wnid: len(x) for wnid, x in images.items()}
  per_class = min(sizes.values())
  if any(n != per_class for n in sizes.values()):
    largest = sorted(sizes.items(), key=lambda kv: kv[1])
    logging.warning(
      '%s: classes have %d to %d images; every class is cut to the %d of the smallest (%s). '
      'Episodes sample from those.', source, per_class, largest[-1][1], per_class,
      largest[0][0])
  stacked = np.stack([np.stack(x[:per_class]) for x in images.values()])
  return ClassMajorDataset(stacked, tuple(images))

