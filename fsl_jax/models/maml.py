"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), and its first-order version.

MAML learns an initialisation theta of a classifier from which a few SGD steps
on an episode's supports give a good classifier of its queries (Algorithm 2):
`theta' = theta - alpha grad L_support(theta)`, repeated `inner_steps` times,
and the meta-objective is the query loss of `theta'`, differentiated through
the inner loop (second order). With `first_order` the inner-loop gradients are
constants of theta (their derivative is stopped), so the meta-gradient is the
query loss's gradient at theta' applied to theta (Sec. 5.2, "first-order
approximation"). With `adapt='head'` only the linear head is adapted in the
inner loop (ANIL, Raghu et al. 2020); the body's features are computed once.

The network is the paper's Conv-4: four blocks of 3x3 conv (`filters`
channels), BatchNorm and ReLU, downsampled by stride-2 convs (Omniglot: 28 ->
14 -> 7 -> 4 -> 2, then the mean over the 2x2 map) or by 2x2 max-pools
(miniImageNet: 84 -> 42 -> 21 -> 10 -> 5, flattened), and a linear head of `way`
outputs. It is a pure function of a flat parameter dict (`network`), which the
module declares with `self.param` and applies functionally, so that the inner
loop is a `lax.scan` of `jax.grad` over that dict, inside the forward pass. The
support set and its labels reach `__call__`, the query labels do not: the
inner loop never sees them.

BatchNorm, and what "transductive" means here. The paper's code normalises
with the statistics of the batch passed in, in training and at test time alike
(it keeps no running averages): the supports by the supports' statistics in the
inner loop, and the queries by the statistics of the whole query batch. That is
transductive: a query's prediction depends on the other queries of its
episode. `transductive=True` is that protocol. With `transductive=False` every
BatchNorm layer normalises the queries with the statistics of the supports
(computed at the adapted parameters), so no query affects another's logits (a
test checks both). Either way a forward pass uses only the episode's own
images, no running averages exist, and the module has no `batch_stats`.

The inner objective is the official code's: the sum of the supports'
cross-entropies divided by the shot, i.e. `way` times their mean, so that its
step sizes (0.4 and 0.1 on Omniglot, 0.01 on miniImageNet) carry over; the
meta-objective is the mean query cross-entropy (Adam makes its scale moot).

What the inner loop adapts: as in the official code, the conv kernels and the
head (`adapted_names`; ANIL: the head). BatchNorm has an offset and no scale
(the official `batch_norm(scale=False)`), and the offsets are meta-learned by
the outer loop but constants of the inner loop (officially they are layer
variables outside the fast weights). This matters: adapting a scale and the
offsets too with the Omniglot step of 0.4 made the first inner step raise the
mean support loss at initialisation (3.6 -> 7.5 over 8 real 5-way 1-shot
episodes, 32 filters) instead of lowering it (3.6 -> 3.1), and kept a 100-step
run near chance (37% test accuracy).

Where this departs from the official code (cbfinn/maml):
  * The convs have no bias: the official ones have one, which BatchNorm cancels
    (its gradient is zero).
  * BatchNorm's epsilon is the official 1e-3; the initialisation is the
    official one (Glorot uniform convs; head N(0, 1) on Omniglot, Glorot
    uniform on miniImageNet: `head_init`).
  * The official miniImageNet run clips the meta-gradient to [-10, 10]; the
    shared optimizer has no clipping, so it is not done here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fsl_jax.models import batchnorm
from fsl_jax.models.base import FewShotMethod, MethodOutput, register

Params = dict[str, jax.Array]

DOWNSAMPLE = ('stride', 'max_pool')
HEAD_INITS = ('normal', 'xavier')
ADAPT = ('all', 'head')
HEAD = ('head_kernel', 'head_bias')


def _batch_norm(x: jax.Array, offset: jax.Array, stat_rows: int | None,
                epsilon: float) -> jax.Array:
  """Normalises `[N, H, W, C]` by the statistics of `x[:stat_rows]` (all of `x` if None),
  then adds `offset` (no scale: the official network's `batch_norm(scale=False)`)."""
  ref = x if stat_rows is None else x[:stat_rows]
  mean = ref.mean(axis=(0, 1, 2))
  var = jnp.square(ref - mean).mean(axis=(0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + epsilon) + offset


def conv3x3(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """A 3x3 'SAME' convolution (TensorFlow's padding) as one matrix product of patches.

  Why not `lax.conv_general_dilated`: in the training step the adapted kernels
  differ per episode, and under the episodes' vmap a convolution with a batched
  kernel becomes a grouped convolution, which XLA's CPU backend ran about 7x
  slower than this batched matrix product (second-order gradient of two 28x28x64
  convs on 4 x 10 images: 11.5 s against 1.7 s).

  Args:
    x: `[N, H, W, C]`.
    kernel: `[3, 3, C, F]` (HWIO).
    stride: 1 or 2.

  Returns:
    `[N, ceil(H / stride), ceil(W / stride), F]`.
  """
  _, h, w, c = x.shape
  oh, ow = -(-h // stride), -(-w // stride)
  pad_h, pad_w = max((oh - 1) * stride + 3 - h, 0), max((ow - 1) * stride + 3 - w, 0)
  x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                  (0, 0)))
  patches = jnp.concatenate(
    [x[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride, :]
     for i in range(3) for j in range(3)], axis=-1)  # [N, oh, ow, 9C], (i, j, c) order.
  return patches @ kernel.reshape(9 * c, kernel.shape[-1])


def body(params: Params, images: jax.Array, *, downsample: str = 'stride',
         stat_rows: int | None = None, epsilon: float = 1e-3) -> jax.Array:
  """The four conv blocks: `[N, H, W, C]` images -> `[N, D]` features.

  Args:
    params: the flat parameter dict (`block{i}_kernel`, `block{i}_offset`, ...).
    images: the batch.
    downsample: 'stride' (stride-2 convs, then the mean over the final map) or
      'max_pool' (2x2 max-pools, then flattened), as the official Omniglot and
      miniImageNet networks.
    stat_rows: BatchNorm uses the statistics of the first `stat_rows` images
      (the supports, for non-transductive queries); None: of the whole batch.
    epsilon: BatchNorm's.
  """
  x = images.astype(jnp.float32)
  stride = 2 if downsample == 'stride' else 1
  i = 0
  while f'block{i}_kernel' in params:
    x = conv3x3(x, params[f'block{i}_kernel'], stride)
    x = _batch_norm(x, params[f'block{i}_offset'], stat_rows, epsilon)
    x = nn.relu(x)
    if downsample == 'max_pool':
      x = batchnorm.max_pool_2x2(x)
    i += 1
  if downsample == 'stride':
    return x.mean(axis=(1, 2))
  return x.reshape((x.shape[0], -1))


def head(params: Params, features: jax.Array) -> jax.Array:
  """The linear head: `[N, D]` -> `[N, way]` logits."""
  return features @ params['head_kernel'] + params['head_bias']


def network(params: Params, images: jax.Array, **body_kwargs) -> jax.Array:
  """The whole classifier, `[N, H, W, C]` -> `[N, way]` logits (see `body`)."""
  return head(params, body(params, images, **body_kwargs))


def inner_objective(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The official inner loss: the sum of the cross-entropies over the shot, i.e.
  `way` times their mean for a balanced episode."""
  way = logits.shape[-1]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() * way


def inner_loop(objective: Callable[[Params], jax.Array], fast: Params, *, steps: int, lr: float,
               first_order: bool = False, remat: bool = False,
               unroll: int = 1) -> tuple[Params, jax.Array]:
  """`steps` SGD steps `p <- p - lr * grad objective(p)` from `fast`, as a `lax.scan`.

  Args:
    objective: the support loss as a function of the adapted parameters.
    fast: the parameters to adapt (the initial ones: differentiable).
    steps: the number of steps (static).
    lr: the step size alpha.
    first_order: stop the gradient through each step's gradient (FOMAML).
    remat: recompute each step's forward pass in the backward pass
      (`jax.checkpoint`), so that only the parameters between steps are stored.
    unroll: steps per scan iteration (clamped to `steps`).

  Returns:
    The adapted parameters and `[steps]` support losses, each before its step.
  """

  def step(p, _):
    loss, grads = jax.value_and_grad(objective)(p)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    return jax.tree.map(lambda x, g: x - lr * g, p, grads), loss

  if remat:
    step = jax.checkpoint(step, prevent_cse=False)  # Safe inside a scan.
  return jax.lax.scan(step, fast, None, length=steps, unroll=max(1, min(unroll, steps)))


def adapted_names(params: Params, adapt: str) -> list[str]:
  """The parameters the inner loop adapts: the conv kernels and the head ('all'), or
  the head alone ('head'). The BatchNorm offsets are meta-learned only, as in the
  official code, where they are layer variables outside the fast weights."""
  return [k for k in params if k in HEAD or (adapt == 'all' and k.endswith('_kernel'))]


def feature_size(height: int, width: int, filters: int, downsample: str, blocks: int = 4) -> int:
  """The width of `body`'s output for `height x width` images."""
  if downsample == 'stride':
    return filters  # Mean over the final map.
  for _ in range(blocks):  # 'SAME' convs, 2x2 'VALID' pools.
    height, width = height // 2, width // 2
  return height * width * filters


@register('maml')
class MAML(FewShotMethod):
  """MAML / first-order MAML / ANIL on the paper's Conv-4; see the module docstring.

  Attributes:
    filters: channels of the four convs (64 on Omniglot, 32 on miniImageNet).
    downsample: 'stride' or 'max_pool' (see `body`).
    head_init: 'normal' (N(0, 1), official Omniglot) or 'xavier' (Glorot
      uniform, official miniImageNet).
    inner_lr: the inner step size alpha.
    inner_steps: inner steps in training (`train=True`).
    test_inner_steps: inner steps in evaluation (`train=False`).
    first_order: first-order MAML.
    adapt: 'all' (MAML) or 'head' (ANIL).
    transductive: BatchNorm normalises the queries by the query batch's
      statistics (the paper's) rather than by the supports'.
    inner_remat: `jax.checkpoint` each inner step.
    scan_unroll: inner steps per scan iteration.
    epsilon: BatchNorm's.
    num_blocks: conv blocks (the paper's 4; fewer in unit tests).
  """

  filters: int = 64
  downsample: str = 'stride'
  head_init: str = 'normal'
  inner_lr: float = 0.4
  inner_steps: int = 5
  test_inner_steps: int = 10
  first_order: bool = False
  adapt: str = 'all'
  transductive: bool = True
  inner_remat: bool = False
  scan_unroll: int = 1
  epsilon: float = 1e-3
  num_blocks: int = 4

  # XLA's default CPU fusions (YNNPACK) instead of the project's none: this
  # network's convolutions are matrix products of patches, and its Omniglot
  # train step (meta-batch 32, second order) takes 0.17-0.21 s instead of
  # 0.33-0.36 s with them (experiments/README.md, Benchmark).
  XLA_CPU_FLAGS = {'--xla_cpu_experimental_ynn_fusion_type': None}

  CONFIG_DEFAULTS = {
    'filters': 64,  # 32 on miniImageNet.
    'downsample': 'stride',  # 'stride' (Omniglot) or 'max_pool' (miniImageNet).
    'head_init': 'normal',  # 'normal' (Omniglot) or 'xavier' (miniImageNet).
    'inner_lr': 0.4,  # On `inner_objective`: way x the mean support cross-entropy.
    'inner_steps': 5,  # Inner SGD steps in training...
    'test_inner_steps': 10,  # ...and in validation and test.
    'first_order': False,
    'adapt': 'all',  # 'all' (MAML) or 'head' (ANIL).
    'transductive': True,  # Queries normalised by the query batch (the paper's).
    'inner_remat': False,  # Recompute each inner step in the backward pass.
    'scan_unroll': 1,  # Inner steps per scan iteration.
  }

  @classmethod
  def from_config(cls, config) -> MAML:
    choices = {'downsample': DOWNSAMPLE, 'head_init': HEAD_INITS, 'adapt': ADAPT}
    for field, allowed in choices.items():
      if config[field] not in allowed:
        raise ValueError(f'{field} must be one of {allowed}, got {config[field]!r}.')
    for field in ('filters', 'inner_steps', 'test_inner_steps', 'scan_unroll'):
      value = config[field]
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{field} must be an integer of at least 1, got {value!r}.')
    if not config.inner_lr > 0:
      raise ValueError(f'inner_lr must be positive, got {config.inner_lr!r}.')
    for field in ('first_order', 'transductive', 'inner_remat'):
      if not isinstance(config[field], bool):
        raise ValueError(f'{field} must be True or False, got {config[field]!r}.')
    if config.test_way != config.way:
      raise ValueError(f'maml has a head of `way` outputs, so test_way ({config.test_way}) must '
                       f'equal way ({config.way}).')
    # Shared fields that would be silently ignored: MAML has its own network.
    if config.batchnorm_stats != 'episode' or config.batchnorm_unbiased_running_var:
      raise ValueError("maml normalises each forward pass by its own batch (see transductive) "
                       "and keeps no running statistics; leave batchnorm_stats='episode' and "
                       'batchnorm_unbiased_running_var=False.')
    if config.remat:
      raise ValueError('maml recomputes per inner step instead: set inner_remat=True, not remat.')
    if config.embed_chunk_size:
      raise ValueError('maml embeds each batch at once inside its inner loop; leave '
                       f'embed_chunk_size=0 (got {config.embed_chunk_size!r}), and set '
                       'inner_remat=True to save memory.')
    if config.compute_dtype != 'float32':
      raise ValueError('maml computes in float32 only; got '
                       f'compute_dtype={config.compute_dtype!r}.')
    return cls(filters=config.filters, downsample=config.downsample, head_init=config.head_init,
               inner_lr=float(config.inner_lr), inner_steps=config.inner_steps,
               test_inner_steps=config.test_inner_steps, first_order=config.first_order,
               adapt=config.adapt, transductive=config.transductive,
               inner_remat=config.inner_remat, scan_unroll=config.scan_unroll)

  def queries_interact(self) -> bool:
    return self.transductive

  def declare_params(self, image_shape: tuple[int, ...], way: int) -> Params:
    """Declares (or, after init, reads) the flat parameter dict."""
    params, channels = {}, image_shape[-1]
    conv_init = nn.initializers.xavier_uniform()
    for i in range(self.num_blocks):
      params[f'block{i}_kernel'] = self.param(f'block{i}_kernel', conv_init,
                                              (3, 3, channels, self.filters), jnp.float32)
      params[f'block{i}_offset'] = self.param(f'block{i}_offset', nn.initializers.zeros,
                                              (self.filters,), jnp.float32)
      channels = self.filters
    size = feature_size(*image_shape[:2], self.filters, self.downsample, self.num_blocks)
    head_init = (nn.initializers.normal(1.0) if self.head_init == 'normal'
                 else nn.initializers.xavier_uniform())
    params['head_kernel'] = self.param('head_kernel', head_init, (size, way), jnp.float32)
    params['head_bias'] = self.param('head_bias', nn.initializers.zeros, (way,), jnp.float32)
    return params

  @nn.compact
  def __call__(self, support_images, support_labels, query_images, unlabeled_images=None,
               *, way: int, train: bool) -> MethodOutput:
    del unlabeled_images  # Not used by this method.
    params = self.declare_params(support_images.shape[1:], way)
    if self.is_initializing():  # The parameters' shapes are all init needs: no inner loop.
      return MethodOutput(logits=network(params, query_images, downsample=self.downsample),
                          aux={'support_losses': jnp.zeros((1,))})
    steps = self.inner_steps if train else self.test_inner_steps
    loop = functools.partial(inner_loop, steps=steps, lr=self.inner_lr,
                             first_order=self.first_order, remat=self.inner_remat,
                             unroll=self.scan_unroll)
    features = functools.partial(body, downsample=self.downsample, epsilon=self.epsilon)
    num_supports = support_images.shape[0]

    def embed(p):
      """Support and query features at the parameters `p`."""
      if self.transductive:
        return features(p, support_images), features(p, query_images)
      both = features(p, jnp.concatenate([support_images, query_images]), stat_rows=num_supports)
      return both[:num_supports], both[num_supports:]

    fast = {k: params[k] for k in adapted_names(params, self.adapt)}
    if self.adapt == 'head':  # ANIL: the body is fixed in the inner loop.
      support, query = embed(params)
      fast, losses = loop(lambda f: inner_objective(head(f, support), support_labels), fast)
      logits = head(fast, query)
    else:  # The BatchNorm offsets are constants of the inner loop (`adapted_names`).
      objective = lambda f: inner_objective(
        head(f, features({**params, **f}, support_images)), support_labels)
      fast, losses = loop(objective, fast)
      adapted = {**params, **fast}
      logits = head(adapted, embed(adapted)[1])
    return MethodOutput(logits=logits, aux={'support_losses': losses})

  def loss(self, outputs: MethodOutput, episode) -> tuple[jax.Array, dict]:
    """The query cross-entropy, and the mean support cross-entropy before the first
    and before the last inner step (diagnostics of the inner loop)."""
    loss, _ = super().loss(outputs, episode)
    per_support = outputs.aux['support_losses'] / outputs.logits.shape[-1]
    return loss, {'inner_loss_first': per_support[0], 'inner_loss_last': per_support[-1]}
