"""Embedding networks shared by the methods."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax import parallel
from fsl_jax.models import batchnorm, conv, linear

# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here), as in the
# reference implementations of every method in this library. `batchnorm.BatchNorm`
# is `nn.BatchNorm` with a backward pass that is fast on XLA's CPU backend.
BatchNorm = functools.partial(batchnorm.BatchNorm, momentum=0.9, epsilon=1e-5)

# The vmap axis of the episodes in the train step (`fsl_jax.training.train`).
EPISODES = 'episodes'


@dataclasses.dataclass(frozen=True)
class BatchNormSpec:
  """A `bn_axis` that also sets how running variances are updated.

  Attributes:
    axis: the named axes the training statistics pool over (as a plain `bn_axis`).
    unbiased_running_var: update the running variance with the unbiased batch
      variance (n / (n - 1) times the biased one), as PyTorch does; the biased
      one (flax's choice) otherwise. Normalisation in training uses the biased
      variance either way, as both libraries do.
    per_position: statistics per image position of the call, pooled over `axis`
      (`batchnorm.BatchNorm.per_position`).
  """

  axis: Any = None
  unbiased_running_var: bool = False
  per_position: bool = False


def batch_norm(train: bool, bn_axis, **kwargs) -> batchnorm.BatchNorm:
  """BatchNorm whose training statistics also pool over the named axes `bn_axis`.

  `bn_axis=None` normalises with the statistics of the call alone (one episode,
  as the model is vmapped over episodes); `('episodes', 'devices')` pools them
  over the whole meta-batch, as a PyTorch model that sees the meta-batch as one
  batch does. A `BatchNormSpec` gives the axes and the running-variance rule.
  Evaluation always uses the running averages.
  """
  spec = bn_axis if isinstance(bn_axis, BatchNormSpec) else BatchNormSpec(bn_axis)
  return BatchNorm(use_running_average=not train, axis_name=spec.axis if train else None,
                   unbiased_running_var=spec.unbiased_running_var,
                   per_position=spec.per_position, **kwargs)


class ConvBlock(nn.Module):
  """3x3 conv, BatchNorm, ReLU, 2x2 max-pool.

  The conv has no bias: BatchNorm removes it, so its true gradient is zero and
  Adam would only turn float noise in that gradient into full-size steps.
  ReLU and the max-pool commute (ReLU is monotone), so the pool runs first, fused
  with the BatchNorm (`batchnorm.normalize_max_pool`), and ReLU on the pooled map.
  """

  features: int = 64
  bn_axis: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), padding='SAME', use_bias=False, dtype=self.dtype)(x)
    x = batch_norm(train, self.bn_axis, max_pool=True)(x)
    return nn.relu(x)


def block_class(cls, remat: bool):
  """`cls`, or with `remat` its `nn.remat` version (the activations inside each block
  are recomputed in the backward pass instead of stored; only block outputs are
  kept). Its `__call__(x, train)` takes `train` positionally (a static argument),
  and the parameters are the same either way."""
  return nn.remat(cls, static_argnums=(2,)) if remat else cls


class Conv4(nn.Module):
  """The Conv-4 of Vinyals et al. 2016 and Snell et al. 2017.

  Four `ConvBlock`s of `features` channels, flattened: 28x28 Omniglot gives a
  64-d embedding (28 -> 14 -> 7 -> 3 -> 1), 84x84 gives 1600-d.

  BatchNorm sees, in training, the statistics of the images passed in one call:
  the methods embed one episode (supports and queries together) per call and
  vmap over episodes, so each episode is normalised by its own statistics and the
  running averages are the mean over the meta-batch. In evaluation it uses the
  running averages only, so an image's embedding never depends on another image.
  """

  features: int = 64
  num_blocks: int = 4
  bn_axis: Any = None  # See `batch_norm`.
  dtype: Any = jnp.float32  # Compute dtype; see `compute_dtype`.
  remat: bool = False  # See `block_class`.
  flatten: bool = True  # False: return the `[batch, h, w, features]` map (`conv4_map`).

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Maps `[batch, H, W, C]` images to `[batch, D]` float32 embeddings."""
    x = images.astype(self.dtype)
    block = block_class(ConvBlock, self.remat)
    for i in range(self.num_blocks):
      x = block(self.features, self.bn_axis, self.dtype, name=f'ConvBlock_{i}')(x, train)
    if self.flatten:
      x = x.reshape((x.shape[0], -1))
    return x.astype(jnp.float32)


def channel_dropout(x: jax.Array, rate, rng: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Dropout of whole channels (PyTorch's `Dropout2d`), scaled by `1 / (1 - rate)`.

  Args:
    x: features with channels last.
    rate: drop probability; a Python float or a traced scalar (as inside a scan,
      where each layer has its own rate). A rate of 0 is the identity.
    rng: the dropout key.
    axes: the axes a mask entry is shared over (e.g. the spatial axes).

  Returns:
    `x` with dropped channels zeroed and kept ones rescaled.
  """
  keep = 1.0 - jnp.asarray(rate, x.dtype)
  shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
  mask = jax.random.bernoulli(rng, keep, shape)
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


class EGNNConv4(nn.Module):
  """The embedding network of EGNN (Kim et al. 2019) for 84x84 images.

  Four blocks of 3x3 conv (64, 96, 128, 256 channels; the second without
  padding), BatchNorm, 2x2 max-pool and LeakyReLU 0.2, with channel dropout 0.4
  after block 3 and 0.5 after block 4; then flatten, a linear layer to
  `embed_dim` and BatchNorm. 84x84 inputs end at 5x5x256 (84 -> 42 -> 20 -> 10
  -> 5); the same network on 28x28 Omniglot ends at 1x1x256 (28 -> 14 -> 6 -> 3
  -> 1), so the linear layer maps 256 -> 128 there (`egnn_conv4_omniglot`, which
  also drops the dropout: see `BACKBONES`).
  """

  features: tuple[int, ...] = (64, 96, 128, 256)
  padding: tuple[str, ...] = ('SAME', 'VALID', 'SAME', 'SAME')
  dropout: tuple[float, ...] = (0.0, 0.0, 0.4, 0.5)
  embed_dim: int = 128
  bn_axis: Any = None  # See `batch_norm`.
  dtype: Any = jnp.float32  # Compute dtype; see `compute_dtype`.
  # `conv.Conv` instead of `nn.Conv` (the same parameters): fast inside a loop, so
  # `in_chunks` sets it; at the top level nn.Conv measured faster (EGNN Omniglot step).
  loop_conv: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Maps `[batch, H, W, C]` images to `[batch, embed_dim]` float32 embeddings."""
    x = images.astype(self.dtype)
    for features, padding, rate in zip(self.features, self.padding, self.dropout, strict=True):
      layer = conv.Conv if self.loop_conv else nn.Conv
      x = layer(features, (3, 3), padding=padding, use_bias=False, dtype=self.dtype)(x)
      x = batch_norm(train, self.bn_axis, max_pool=True)(x)  # BatchNorm, then the max-pool.
      x = nn.leaky_relu(x, 0.2)
      if train and rate:
        x = channel_dropout(x, rate, self.make_rng('dropout'), axes=(1, 2))
    # No bias before BatchNorm (the reference has one; BN cancels it, see ConvBlock),
    # and no shift in the last BatchNorm: EGNN's graph (|v_i - v_j| and a node MLP
    # that starts with BatchNorm) and metric methods are invariant to a shift of all
    # embeddings, so its gradient is zero (the multi-device test found it frozen).
    x = linear.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)(x.reshape((x.shape[0], -1)))
    return batch_norm(train, self.bn_axis, use_bias=False)(x).astype(jnp.float32)


class RelationConv4(nn.Module):
  """The embedding module of Relation Networks (Sung et al. 2018), which keeps the
  feature map: four blocks of 3x3 conv (64 channels), BatchNorm and ReLU, the
  first two unpadded and followed by a 2x2 max-pool, the last two padded and
  unpooled. 28x28 Omniglot ends at 5x5x64 (28 -> 26 -> 13 -> 11 -> 5), 84x84 at
  19x19x64. Returns `[batch, h, w, 64]` maps, not vectors: for `relationnet`.

  Convolutions are initialised as the reference code's (He normal over the
  fan-out), since the relation module's sigmoid-and-MSE training is sensitive
  to the scale at which it starts.
  """

  features: int = 64
  bn_axis: Any = None  # See `batch_norm`.
  dtype: Any = jnp.float32  # Compute dtype; see `compute_dtype`.

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    x = images.astype(self.dtype)
    init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
    for i in range(4):
      pooled = i < 2
      x = nn.Conv(self.features, (3, 3), padding='VALID' if pooled else 'SAME', use_bias=False,
                  dtype=self.dtype, kernel_init=init)(x)
      x = nn.relu(batch_norm(train, self.bn_axis, max_pool=pooled)(x))
    return x.astype(jnp.float32)


def drop_block(x: jax.Array, rate: float, block_size: int, rng: jax.Array) -> jax.Array:
  """DropBlock (Ghiasi et al. 2018) on `[batch, H, W, C]`: zeroes random
  `block_size` x `block_size` squares, per channel, and rescales by kept/total.

  Seeds are drawn with probability `gamma` on the positions where a whole block
  fits, so that a fraction `rate` of the units is dropped on average (before
  overlaps): `gamma = rate / b^2 * H W / ((H - b + 1) (W - b + 1))`.
  """
  n, h, w, c = x.shape
  b = min(block_size, h, w)
  gamma = rate / b ** 2 * (h * w) / ((h - b + 1) * (w - b + 1))
  seeds = jax.random.bernoulli(rng, gamma, (n, h - b + 1, w - b + 1, c)).astype(x.dtype)
  # A seed at (i, j) drops the block [i, i + b) x [j, j + b).
  padded = jnp.pad(seeds, ((0, 0), (b - 1, b - 1), (b - 1, b - 1), (0, 0)))
  dropped = jax.lax.reduce_window(padded, jnp.array(0, x.dtype), jax.lax.max, (1, b, b, 1),
                                  (1, 1, 1, 1), 'VALID')
  keep = 1 - dropped
  scale = keep.size / jnp.maximum(keep.sum(), 1)
  return x * keep * scale.astype(x.dtype)


class ResidualBlock(nn.Module):
  """ResNet-12's block: three 3x3 conv + BatchNorm (LeakyReLU 0.1 after the first
  two), added to a 1x1 conv + BatchNorm shortcut, LeakyReLU 0.1, 2x2 max-pool;
  then dropout (`drop_block_size` 0) or DropBlock of rate `drop_rate`."""

  features: int
  bn_axis: Any = None
  dtype: Any = jnp.float32
  drop_rate: float = 0.0
  drop_block_size: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    layer = functools.partial(nn.Conv, self.features, use_bias=False, dtype=self.dtype)
    shortcut = batch_norm(train, self.bn_axis)(layer((1, 1))(x))
    for i in range(3):
      x = batch_norm(train, self.bn_axis)(layer((3, 3), padding='SAME')(x))
      if i < 2:
        x = nn.leaky_relu(x, 0.1)
    x = batchnorm.max_pool_2x2(nn.leaky_relu(x + shortcut, 0.1))
    if train and self.drop_rate:
      rng = self.make_rng('dropout')
      if self.drop_block_size:
        x = drop_block(x, self.drop_rate, self.drop_block_size, rng)
      else:
        x = nn.Dropout(self.drop_rate, deterministic=False)(x, rng=rng)
    return x


class ResNet12(nn.Module):
  """ResNet-12 as the few-shot field uses it (TADAM, MetaOptNet): four
  `ResidualBlock`s of 64, 160, 320 and 640 channels, flattened (84x84 -> 5x5x640,
  16000-d; 32x32 -> 2x2x640, 2560-d) or average-pooled (640-d).

  `drop_rate` > 0 applies dropout after the first two blocks and DropBlock of
  size `drop_block_size` after the last two (MetaOptNet: 0.1 and 5 on
  miniImageNet and tieredImageNet, 2 on CIFAR-FS and FC100), with the rate
  constant (MetaOptNet ramps DropBlock's rate up over the first 40,000 steps).
  """

  features: tuple[int, ...] = (64, 160, 320, 640)
  pool: str = 'flatten'  # 'flatten' or 'avg'.
  drop_rate: float = 0.0
  drop_block_size: int = 5
  bn_axis: Any = None  # See `batch_norm`.
  dtype: Any = jnp.float32  # Compute dtype; see `compute_dtype`.
  remat: bool = False  # See `block_class`.

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    x = images.astype(self.dtype)
    block = block_class(ResidualBlock, self.remat)
    for i, features in enumerate(self.features):
      x = block(features, self.bn_axis, self.dtype, self.drop_rate,
                self.drop_block_size if i >= 2 else 0, name=f'ResidualBlock_{i}')(x, train)
    if self.pool == 'avg':
      x = x.mean(axis=(1, 2))
    elif self.pool != 'flatten':
      raise ValueError(f"pool must be 'flatten' or 'avg', got {self.pool!r}.")
    return x.reshape((x.shape[0], -1)).astype(jnp.float32)


BACKBONES = {
  'conv4': Conv4,
  'conv4_map': functools.partial(Conv4, flatten=False),  # Feature maps, e.g. for tpn.
  'resnet12': ResNet12,
  'resnet12_avgpool': functools.partial(ResNet12, pool='avg'),
  # MetaOptNet's regularisation: miniImageNet / tieredImageNet, and CIFAR sizes.
  'resnet12_dropblock': functools.partial(ResNet12, drop_rate=0.1, drop_block_size=5),
  'resnet12_dropblock_cifar': functools.partial(ResNet12, drop_rate=0.1, drop_block_size=2),
  'relation_conv4': RelationConv4,  # Feature maps, for relationnet.
  'egnn_conv4': EGNNConv4,
  # Omniglot: EGNN's paper has no Omniglot experiment, so this is our choice: the
  # same network (a 1x1x256 map before the linear layer on 28x28), without the
  # dropout, which ProtoNet-style Omniglot embeddings do not use either.
  'egnn_conv4_omniglot': functools.partial(EGNNConv4, dropout=(0.0, 0.0, 0.0, 0.0)),
}


BATCHNORM_STATS = ('episode', 'meta_batch', 'per_position')


def bn_axis(config, embedding: bool = True):
  """The `bn_axis` of a config's `batchnorm_stats` and `batchnorm_unbiased_running_var`.

  'episode': each episode's own statistics. 'meta_batch': pooled over every
  episode of the step. 'per_position': in the embedding (`embedding=True`), one
  set of statistics per image position of the episode, pooled over the
  meta-batch, as PyTorch code that embeds the meta-batch one node position at a
  time computes (the official EGNN's); after the embedding (`embedding=False`,
  e.g. EGNN's graph layers), as 'meta_batch'.
  """
  axis = None if config.batchnorm_stats == 'episode' else (EPISODES, parallel.AXIS)
  per_position = embedding and config.batchnorm_stats == 'per_position'
  if config.batchnorm_unbiased_running_var or per_position:
    return BatchNormSpec(axis, bool(config.batchnorm_unbiased_running_var), per_position)
  return axis


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(config):
  """The dtype of a config's `compute_dtype` ('float32' or 'bfloat16').

  With 'bfloat16' the backbones compute their convolutions, matrix products and
  activations in bfloat16. Parameters, BatchNorm statistics and the running
  averages stay float32, and the embeddings are returned as float32, so that
  everything after the backbone (distances, EGNN's graph, the loss) is float32.
  """
  return COMPUTE_DTYPES[config.compute_dtype]  # Checked by `fsl_jax.config.validate`.


def get_backbone(name: str, **kwargs) -> nn.Module:
  if name not in BACKBONES:
    raise ValueError(f'Unknown backbone {name!r}; known backbones: {sorted(BACKBONES)}.')
  return BACKBONES[name](**kwargs)


def _has_field(name: str, field: str) -> bool:
  cls = BACKBONES[name]
  cls = getattr(cls, 'func', cls)  # A functools.partial of a backbone class.
  return field in cls.__dataclass_fields__


def from_config(config) -> nn.Module:
  """The backbone a config names, with its BatchNorm pooling, compute dtype, remat and
  `embed_chunk_size` (see `in_chunks`)."""
  kwargs = {'bn_axis': bn_axis(config), 'dtype': compute_dtype(config)}
  if config.remat:
    if config.backbone in BACKBONES and not _has_field(config.backbone, 'remat'):
      with_remat = sorted(n for n in BACKBONES if _has_field(n, 'remat'))
      raise ValueError(f'Backbone {config.backbone!r} has no remat option; backbones with '
                       f'one: {with_remat}.')
    kwargs['remat'] = True
  chunk = int(config.embed_chunk_size)
  if chunk:
    if chunk < 0:
      raise ValueError(f'embed_chunk_size must be 0 (all images at once) or positive, got {chunk}.')
    if config.batchnorm_stats != 'per_position':
      raise ValueError(
        f"embed_chunk_size={chunk} needs batchnorm_stats='per_position': with "
        f"{config.batchnorm_stats!r} statistics, training BatchNorm pools every image of an "
        'episode, so embedding them in chunks would change the model. Set '
        "batchnorm_stats='per_position' (the official EGNN's) or embed_chunk_size=0.")
    if config.remat:
      raise ValueError('embed_chunk_size already recomputes each chunk in the backward pass; '
                       'set remat=False.')
  backbone = get_backbone(config.backbone, **kwargs)
  return in_chunks(backbone, chunk) if chunk else backbone


def in_chunks(backbone: nn.Module, chunk_size: int) -> nn.Module:
  """`backbone`, embedding its images `chunk_size` at a time, each chunk recomputed in
  the backward pass: the memory of one chunk instead of the whole batch.

  The chunks are one `nn.scan` (the parameters broadcast, the BatchNorm running
  averages carried from chunk to chunk in order), then a direct call on the
  remainder. The parameters are the backbone's own, under the same names, so a
  checkpoint trained in chunks evaluates without them and vice versa. It computes
  the same function as the whole batch at once wherever no image's output depends
  on another's: in evaluation (running averages) and, in training, with
  per-position BatchNorm statistics (`batchnorm_stats='per_position'`, which
  `from_config` requires). Under the episodes' vmap a chunk holds `chunk_size`
  images of every episode. Dropout masks differ from the unchunked ones (one key
  per chunk).

  Why a scan, not a Python loop of `jax.checkpoint`s: XLA schedules the unrolled
  recomputations together, which measured no saving; and why it is fast: the
  backbone's convolutions become `conv.Conv` (`loop_conv=True`), whose weight
  gradient XLA's CPU backend runs at full speed inside a loop (see
  `fsl_jax/models/conv.py`). Only `EGNNConv4` has that switch today: other
  backbones embed in chunks correctly, but slowly on the CPU.
  """
  base = type(backbone)
  chunked_cls = _CHUNKED.get(base)
  if chunked_cls is None:
    chunked_cls = type(f'{base.__name__}InChunks', (base,), {
      '__annotations__': {'embed_chunk_size': int}, 'embed_chunk_size': 0,
      '__call__': _chunked_call, '__module__': __name__,
      '__doc__': f'`{base.__name__}` embedding its images in chunks (`in_chunks`).'})
    _CHUNKED[base] = chunked_cls
  fields = {f: getattr(backbone, f) for f in base.__dataclass_fields__
            if f not in ('parent', 'name')}
  if 'loop_conv' in fields:
    fields['loop_conv'] = True
  return chunked_cls(**fields, embed_chunk_size=chunk_size)


_CHUNKED: dict[type, type] = {}


def _chunked_call(self, images: jax.Array, *, train: bool) -> jax.Array:
  base_call = type(self).__mro__[1].__call__
  chunk, n = self.embed_chunk_size, images.shape[0]
  if self.is_initializing() or chunk >= n:
    return base_call(self, images, train=train)
  count = n // chunk

  def body(module, carry, x):
    return carry, base_call(module, x, train=train)

  body = nn.remat(body, prevent_cse=False)  # Inside a scan: no CSE to prevent.
  stats = {'variable_carry': 'batch_stats'} if train else {}
  broadcast = ['params'] if train else ['params', 'batch_stats']
  scan = nn.scan(body, variable_broadcast=broadcast, split_rngs={'params': False, 'dropout': True},
                 length=count, **stats)
  head = images[:count * chunk].reshape((count, chunk) + images.shape[1:])
  _, out = scan(self, None, head)
  out = out.reshape((count * chunk,) + out.shape[2:])
  if count * chunk < n:
    out = jnp.concatenate([out, base_call(self, images[count * chunk:], train=train)], axis=0)
  return out


def embed_episode(backbone: nn.Module, *image_sets: jax.Array, train: bool) -> list[jax.Array]:
  """Embeds several image sets of one episode in one call (one set of BN statistics)."""
  sizes = [x.shape[0] for x in image_sets]
  embeddings = backbone(jnp.concatenate(image_sets, axis=0), train=train)
  splits = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
  return jnp.split(embeddings, splits, axis=0)
