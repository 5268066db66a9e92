"""Invariants of the episode samplers (device and host)."""

import jax
import numpy as np
import pytest

from fsl_jax.data import episodes as ep
from fsl_jax.data import errors
from fsl_jax.data.dataset import ClassMajorDataset

NUM_CLASSES, EXAMPLES = 12, 10


def _labelled_dataset():
  """Pixel (0, 0) holds the class id and pixel (0, 1) the example id."""
  images = np.zeros((NUM_CLASSES, EXAMPLES, 4, 4, 1), np.uint8)
  images[:, :, 0, 0, 0] = np.arange(NUM_CLASSES)[:, None]
  images[:, :, 0, 1, 0] = np.arange(EXAMPLES)[None, :]
  return ClassMajorDataset(images, tuple(str(i) for i in range(NUM_CLASSES)))


def _ids(images):
  images = np.asarray(images)
  return images[:, 0, 0, 0].astype(int), images[:, 0, 1, 0].astype(int)


def _check(episode, spec):
  parts = [(episode.support_images, episode.support_labels, spec.shot),
           (episode.query_images, episode.query_labels, spec.query),
           (episode.unlabeled_images, episode.unlabeled_labels, spec.unlabeled_shot)]
  label_to_class, used = {}, set()
  for images, labels, per_class in parts:
    labels = np.asarray(labels)
    assert images.shape[0] == labels.shape[0] == spec.way * per_class
    np.testing.assert_array_equal(np.bincount(labels, minlength=spec.way), per_class)
    for c, e, y in zip(*_ids(images), labels, strict=True):
      assert label_to_class.setdefault(int(y), c) == c  # One class per label.
      assert (c, e) not in used  # No example twice in an episode.
      used.add((c, e))
  assert len(set(label_to_class.values())) == spec.way  # Distinct classes.


@pytest.mark.parametrize('spec', [ep.EpisodeSpec(5, 1, 3), ep.EpisodeSpec(4, 2, 3, 2),
                                  ep.EpisodeSpec(12, 5, 5)])
def test_device_sampler_invariants(spec):
  images = _labelled_dataset().images
  sample = jax.jit(jax.vmap(ep.sample_episode, in_axes=(0, None, None)), static_argnums=2)
  batch = sample(jax.random.split(jax.random.PRNGKey(0), 20), images, spec)
  for i in range(20):
    _check(jax.tree.map(lambda x, i=i: np.asarray(x[i]), batch), spec)


def test_host_sampler_invariants():
  ds = _labelled_dataset()
  spec = ep.EpisodeSpec(4, 2, 3, 1)
  source = ep.HostEpisodes(lambda c: ds.images[c], NUM_CLASSES, EXAMPLES, spec)
  for key in jax.random.split(jax.random.PRNGKey(1), 10):
    _check(source.sample(key), spec)
  key = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(source.sample(key).query_images, source.sample(key).query_images)


def test_labels_are_a_random_permutation_and_queries_are_shuffled():
  images = _labelled_dataset().images
  spec = ep.EpisodeSpec(5, 1, 4)
  sample = jax.jit(jax.vmap(ep.sample_episode, in_axes=(0, None, None)), static_argnums=2)
  batch = sample(jax.random.split(jax.random.PRNGKey(0), 200), images, spec)
  sorted_queries = sum(np.all(np.diff(np.asarray(q)) >= 0) for q in batch.query_labels)
  assert sorted_queries <= 2  # Class-ordered queries would leak labels by position.
  # Label 0 goes to many different classes: labels are not the class ids.
  first_class = {int(_ids(s)[0][0]) for s in np.asarray(batch.support_images)}
  assert len(first_class) >= 10
  # Every query position sees every label.
  q = np.asarray(batch.query_labels)
  assert all(len(set(q[:, j])) == spec.way for j in range(q.shape[1]))


def test_same_key_same_episode_and_different_keys_differ():
  images = _labelled_dataset().images
  spec = ep.EpisodeSpec(5, 1, 2)
  sample = jax.jit(ep.sample_episode, static_argnums=2)
  a = sample(jax.random.PRNGKey(7), images, spec)
  b = sample(jax.random.PRNGKey(7), images, spec)
  c = sample(jax.random.PRNGKey(8), images, spec)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a.query_images, c.query_images)


def test_episode_keys_do_not_depend_on_how_they_are_batched():
  key = jax.random.PRNGKey(0)
  all_at_once = ep.episode_keys(key, np.arange(10))
  in_pieces = np.concatenate([ep.episode_keys(key, np.arange(i, i + 5)) for i in (0, 5)])
  np.testing.assert_array_equal(all_at_once, in_pieces)


@pytest.mark.parametrize('spec, message', [
  (ep.EpisodeSpec(13, 1, 1), r'A 13-way episode \(way=13\) needs 13 distinct classes, but the 12'),
  (ep.EpisodeSpec(5, 5, 5, 1), '= 11 distinct examples per class are needed, but the classes'),
  (ep.EpisodeSpec(5, 0, 1), 'shot must be at least 1'),
])
def test_impossible_episodes_are_clear_errors(spec, message):
  with pytest.raises(errors.EpisodeError, match=message):
    ep.DeviceEpisodes(_labelled_dataset(), spec, split='test')


def test_episode_errors_name_the_test_fields():
  with pytest.raises(errors.EpisodeError, match=r'\(test_way=13\).*of the val split \(validation '
                     r'and test episodes both use the test_\* shape\).*lower test_way'):
    ep.DeviceEpisodes(_labelled_dataset(), ep.EpisodeSpec(13, 1, 1), split='val',
                      field_prefix='test_')
  with pytest.raises(errors.EpisodeError, match='test_query must be at least 1'):
    ep.DeviceEpisodes(_labelled_dataset(), ep.EpisodeSpec(3, 1, 0), field_prefix='test_')


def test_device_source_normalises_and_keeps_static_shapes():
  source = ep.DeviceEpisodes(_labelled_dataset(), ep.EpisodeSpec(3, 2, 2), mean=0.5, std=0.5,
                             devices=jax.local_devices()[:1])
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  batch = jax.jit(source.episodes)(source.step_inputs()[0], keys)
  assert batch.support_images.shape == (4, 6, 4, 4, 1)
  assert batch.support_images.dtype == np.float32
  assert float(batch.support_images.min()) == -1.0  # (0 / 255 - 0.5) / 0.5.
