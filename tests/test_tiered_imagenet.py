"""tieredImageNet from generated fixtures in the release's format: the memory-mapped
cache, classes of different sizes, host-side episodes, and bad input."""

import io
import os
import pickle

import jax
import numpy as np
import pytest
from PIL import Image

from fsl_jax.data import episodes, errors, registry, tiered_imagenet
from fsl_jax.data.dataset import FlatDataset

SIZES = {'train': [5, 3, 4], 'val': [3, 3], 'test': [4, 6, 3]}


def png(pixels):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='PNG')
  return np.frombuffer(buffer.getvalue(), np.uint8)  # As the release stores them.


def image(label, index, size=84):
  pixels = np.zeros((size, size, 3), np.uint8)
  pixels[..., 0] = label
  pixels[..., 1] = index
  pixels[size // 2:, :, 2] = 200
  return pixels


def write_split(root, split, sizes, protocol=pickle.HIGHEST_PROTOCOL, odd_size=False):
  """Images of each class interleaved, as in the release (not sorted by class)."""
  labels = [c for c, n in enumerate(sizes) for _ in range(n)]
  order = np.random.default_rng(len(labels)).permutation(len(labels))
  labels = [labels[i] for i in order]
  seen, encoded = {}, []
  for label in labels:
    seen[label] = seen.get(label, -1) + 1
    size = 100 if odd_size and seen[label] == 0 else 84
    encoded.append(png(image(label, seen[label], size)))
  os.makedirs(root / 'tiered_imagenet', exist_ok=True)
  with open(root / 'tiered_imagenet' / f'{split}_images_png.pkl', 'wb') as f:
    pickle.dump(encoded, f, protocol=protocol)
  with open(root / 'tiered_imagenet' / f'{split}_labels.pkl', 'wb') as f:
    pickle.dump({'label_specific': np.array(labels), 'label_general': np.zeros(len(labels), int),
                 'label_specific_str': [f'n{split}{c:03d}' for c in range(len(sizes))],
                 'label_general_str': ['all']}, f, protocol=protocol)


@pytest.fixture()
def root(tmp_path):
  for split, sizes in SIZES.items():
    write_split(tmp_path, split, sizes, protocol=2)  # Python 2's protocol, as released.
  return tmp_path


def test_splits_are_flat_sorted_by_class_and_memory_mapped(root):
  for split, sizes in SIZES.items():
    ds = registry.load_dataset('tiered_imagenet', split, str(root), str(root / 'cache'))
    assert isinstance(ds, FlatDataset) and isinstance(ds.images, np.memmap)
    assert ds.class_names == tuple(f'n{split}{c:03d}' for c in range(len(sizes)))
    assert list(np.diff(ds.offsets)) == sizes and ds.examples_per_class == min(sizes)
    for c, n in enumerate(sizes):  # Each class in file order.
      np.testing.assert_array_equal(ds.load_class(c), np.stack([image(c, i) for i in range(n)]))


def test_cache_is_reused_and_a_corrupt_one_decoded_again(root):
  cache = root / 'cache'
  first = np.array(tiered_imagenet.load('test', str(root), str(cache)).images)  # A copy.
  [folder] = os.listdir(cache / 'tiered_imagenet')
  array = cache / 'tiered_imagenet' / folder / 'test.npy'
  mtime = os.path.getmtime(array)
  tiered_imagenet.load('test', str(root), str(cache))
  assert os.path.getmtime(array) == mtime  # Opened, not decoded again.
  with open(array, 'r+b') as f:  # Garble the last image (a sampled row).
    f.seek(-84 * 84 * 3, os.SEEK_END)
    f.write(b'\x01' * 1000)
  again = tiered_imagenet.load('test', str(root), str(cache))
  np.testing.assert_array_equal(again.images, first)
  assert not [n for n in os.listdir(cache / 'tiered_imagenet' / folder) if n.startswith('.tmp')]


def test_other_sizes_are_resized(tmp_path):
  write_split(tmp_path, 'val', [2, 2], odd_size=True)
  ds = tiered_imagenet.load('val', str(tmp_path), str(tmp_path / 'cache'))
  want = np.asarray(Image.fromarray(image(1, 0, 100)).resize((84, 84), Image.LANCZOS))
  np.testing.assert_array_equal(ds.load_class(1)[0], want)


def test_host_episodes_sample_ragged_classes(root):
  ds = tiered_imagenet.load('test', str(root), str(root / 'cache'))
  spec = episodes.EpisodeSpec(way=3, shot=1, query=2)
  source = episodes.HostEpisodes(ds.load_class, ds.num_classes, ds.examples_per_class, spec,
                                 devices=jax.local_devices()[:1])
  for seed in range(5):
    episode = source.sample(jax.random.PRNGKey(seed))
    images = np.concatenate([episode.support_images, episode.query_images])
    labels = np.concatenate([episode.support_labels, episode.query_labels])
    classes = images[:, 0, 0, 0]  # The class is written into the pixels.
    # One class per episode label, each image from its class, no image twice.
    assert all(len(set(classes[labels == k])) == 1 for k in range(3))
    assert len({(c, i) for c, i in zip(classes, images[:, 0, 0, 1], strict=True)}) == len(images)
    # Class 1 has 6 images: indices up to 5 can be drawn, beyond the smallest class's 3.
  drawn = {int(source.sample(jax.random.PRNGKey(s)).query_images[q, 0, 0, 1])
           for s in range(40) for q in range(6)}
  assert max(drawn) >= 4


def test_device_sampling_of_a_memory_mapped_split_is_refused(root):
  from helpers import tiny_config

  from fsl_jax import config as config_lib
  from fsl_jax.training import train

  config, _ = train.build(tiny_config(dataset='tiered_imagenet', data_dir=str(root),
                                      cache_dir=str(root / 'cache'), num_devices=1, test_way=3,
                                      test_query=2))
  with pytest.raises(config_lib.ConfigError, match='episode_sampling=host'):
    train._make_sources(config, ['test'], True, jax.local_devices()[:1])
  config.episode_sampling = 'host'
  (source,) = train._make_sources(config, ['test'], True, jax.local_devices()[:1])
  assert source.image_shape == (84, 84, 3)


def nothing_cached(cache):
  return not [f for _, _, files in os.walk(cache) for f in files]


def test_a_corrupt_png_is_named_and_nothing_is_cached(tmp_path):
  write_split(tmp_path, 'test', [3, 3])
  path = tmp_path / 'tiered_imagenet' / 'test_images_png.pkl'
  with open(path, 'rb') as f:
    encoded = pickle.load(f)
  encoded[4] = encoded[4][:40]  # Truncated.
  with open(path, 'wb') as f:
    pickle.dump(encoded, f)
  with pytest.raises(errors.CorruptDatasetError, match='image 4 cannot be decoded'):
    tiered_imagenet.load('test', str(tmp_path), str(tmp_path / 'cache'))
  assert nothing_cached(tmp_path / 'cache')


@pytest.mark.parametrize('labels, message', [
  ({'label_general': []}, 'label_specific and label_specific_str'),
  ({'label_specific': np.zeros(2, int), 'label_specific_str': ['a']}, 'one class index per image'),
  ({'label_specific': np.array([0, 0, 0, 5, 5, 5]), 'label_specific_str': ['a', 'b']},
   'holds values from 0 to 5'),
  ({'label_specific': np.zeros(6, int), 'label_specific_str': ['a', 'b']}, "'b'] have no images"),
])
def test_bad_labels_are_clear_errors(tmp_path, labels, message):
  write_split(tmp_path, 'test', [3, 3])
  with open(tmp_path / 'tiered_imagenet' / 'test_labels.pkl', 'wb') as f:
    pickle.dump(labels, f)
  with pytest.raises(errors.CorruptDatasetError, match=message):
    tiered_imagenet.load('test', str(tmp_path), str(tmp_path / 'cache'))
  assert nothing_cached(tmp_path / 'cache')


def test_missing_files_are_named(tmp_path):
  write_split(tmp_path, 'test', [3, 3])
  os.remove(tmp_path / 'tiered_imagenet' / 'test_labels.pkl')
  with pytest.raises(errors.DatasetNotFoundError, match='test_labels.pkl not found'):
    tiered_imagenet.load('test', str(tmp_path), str(tmp_path / 'cache'))
  with pytest.raises(errors.DatasetNotFoundError, match='does not exist'):
    tiered_imagenet.load('test', str(tmp_path / 'elsewhere'), str(tmp_path / 'cache'))
