"""Micro-benchmarks behind the CPU choices in README.md (Benchmark: what was tried).

Each case times one jitted forward+backward pass (after compilation, mean of
`--repeats` calls) at EGNN's miniImageNet shapes, and prints one line. Run with
nothing else on the machine; compare lines of one run, not across runs.

    python experiments/microbench.py                     # every case
    python experiments/microbench.py --cases=batchnorm,graph_profile
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=conv python experiments/microbench.py \
      --cases=conv_stack,batchnorm      # convolutions through YNNPACK again

Cases:
  conv_stack    EGNN's four 3x3 convolutions (no normalisation) on `--images`
                84x84x3 images: XLA's convolution vs im2col + matmul, float32 vs
                bfloat16.
  batchnorm     The EGNN Conv-4 (`egnn_conv4`) on `--images` images with flax's
                `nn.BatchNorm`, with `batchnorm.BatchNorm` unfused (then a
                reshape max-pool) and fused with the max-pool (as shipped), and
                with no normalisation (a lower bound).
  matmul        A [16384, 576] x [576, 96] product (EGNN's second convolution as
                im2col, 1/100 of a meta-batch) in float32 and bfloat16, float32
                accumulation; run it under different XLA_FLAGS, e.g.
                `--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true`
                (oneDNN, which uses AMX on CPUs that have it).
  conv_in_loop  The weight gradient of one 3x3, 64-channel convolution on 6 chunks
                of 20 28x28 maps, inside `lax.map` and unrolled, with
                `lax.conv_general_dilated` and with `conv.conv_general_dilated`
                (the backbones' convolution, `fsl_jax/models/conv.py`).
  graph_profile The 3 EGNN graph layers on `--graphs` non-transductive graphs of
                26 nodes (5-way 5-shot, 1 query), forward+backward, with XLA's
                traced time by kind and its ten most expensive operations
                (`fsl_jax.training.benchmark.step_profile`).
"""

from __future__ import annotations

import functools
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

import fsl_jax  # noqa: F401  (the project's XLA flags, before JAX starts a backend)
from fsl_jax.models import backbones, batchnorm, conv, egnn
from fsl_jax.training import benchmark

FLAGS = flags.FLAGS
flags.DEFINE_list('cases', ['matmul', 'conv_stack', 'batchnorm', 'conv_in_loop', 'graph_profile'],
                  'Cases to run.')
flags.DEFINE_integer('images', 150, 'Images per pass (a meta-batch of 40 episodes: 1200).')
flags.DEFINE_integer('graphs', 100, 'Graphs per pass (meta-batch 40 non-transductive: 200).')
flags.DEFINE_integer('repeats', 3, 'Timed calls per case.')

LAYERS = [(3, 64, 'SAME'), (64, 96, 'VALID'), (96, 128, 'SAME'), (128, 256, 'SAME')]


def timed(fn, *args) -> float:
  """Seconds per call of `jax.jit(fn)(*args)` after compilation."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  start = time.perf_counter()
  for _ in range(FLAGS.repeats):
    out = compiled(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / FLAGS.repeats


def conv_xla(x, w, padding):
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def conv_im2col(x, w, padding):
  if padding == 'SAME':
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, wd = x.shape[1] - 2, x.shape[2] - 2
  patches = jnp.concatenate([x[:, i:i + h, j:j + wd] for i in range(3) for j in range(3)], -1)
  return jnp.dot(patches, w.reshape(-1, w.shape[-1]))


def matmul():
  key = jax.random.PRNGKey(0)
  for dtype in (jnp.float32, jnp.bfloat16):
    a = jax.random.normal(key, (16384, 576), dtype)
    b = jax.random.normal(key, (576, 96), dtype)
    seconds = timed(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32), a, b)
    gflops = 2 * 16384 * 576 * 96 / seconds / 1e9
    print(f'matmul {jnp.dtype(dtype).name:8s} {seconds * 1e3:.2f} ms {gflops:.0f} GFLOP/s',
          flush=True)


def conv_stack():
  key = jax.random.PRNGKey(0)
  for dtype in (jnp.float32, jnp.bfloat16):
    weights = [(jax.random.normal(key, (3, 3, ci, co)) * 0.1).astype(dtype)
               for ci, co, _ in LAYERS]
    images = jax.random.normal(key, (FLAGS.images, 84, 84, 3), dtype)
    for name, conv_fn in (('xla', conv_xla), ('im2col', conv_im2col)):
      def loss(weights, x, conv_fn=conv_fn):
        for w, (_, _, padding) in zip(weights, LAYERS, strict=True):
          x = nn.leaky_relu(batchnorm.max_pool_2x2(conv_fn(x, w, padding)), 0.2)
        return jnp.sum(x.astype(jnp.float32) ** 2)
      seconds = timed(jax.grad(loss), weights, images)
      print(f'conv_stack {name:7s} {jnp.dtype(dtype).name:8s} {seconds:.3f} s', flush=True)


class _FlaxBatchNorm(nn.Module):
  """`nn.BatchNorm` with the keyword interface of `batchnorm.BatchNorm` (max_pool after)."""

  use_running_average: bool = False
  axis_name: object = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  use_bias: bool = True
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.BatchNorm(use_running_average=self.use_running_average, momentum=self.momentum,
                     epsilon=self.epsilon, use_bias=self.use_bias)(x)
    return batchnorm.max_pool_2x2(x) if self.max_pool else x


class _UnfusedBatchNorm(batchnorm.BatchNorm):
  """`batchnorm.BatchNorm`, then a separate reshape max-pool."""

  @nn.compact
  def __call__(self, x):
    y = batchnorm.BatchNorm(self.use_running_average, self.axis_name, self.momentum,
                            self.epsilon, self.use_bias, self.use_scale)(x)
    return batchnorm.max_pool_2x2(y) if self.max_pool else y


class _NoBatchNorm(_FlaxBatchNorm):
  """The same interface, no normalisation (the max-pool only): a lower bound."""

  def __call__(self, x):
    return batchnorm.max_pool_2x2(x) if self.max_pool else x


def batchnorm_case():
  images = jax.random.normal(jax.random.PRNGKey(0), (FLAGS.images, 84, 84, 3))
  shipped = backbones.BatchNorm
  for name, module in (('flax nn.BatchNorm', _FlaxBatchNorm),
                       ('fast BatchNorm, then pool', _UnfusedBatchNorm),
                       ('fast BatchNorm fused with pool (shipped)', batchnorm.BatchNorm),
                       ('no normalisation (bound)', _NoBatchNorm)):
    backbones.BatchNorm = functools.partial(module, momentum=0.9, epsilon=1e-5)
    try:
      net = backbones.EGNNConv4(dropout=(0.0,) * 4)
      variables = net.init(jax.random.PRNGKey(0), images[:2], train=False)

      def loss(params, x, net=net, variables=variables):
        out, _ = net.apply({**variables, 'params': params}, x, train=True,
                           mutable=['batch_stats'])
        return jnp.sum(out ** 2)
      seconds = timed(jax.grad(loss), variables['params'], images)
    finally:
      backbones.BatchNorm = shipped
    print(f'batchnorm {name:42s} {seconds:.3f} s', flush=True)


def conv_in_loop():
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (6, 20, 28, 28, 64))
  w = jax.random.normal(key, (3, 3, 64, 64)) * 0.05
  for name, fn in (('lax', jax.lax.conv_general_dilated), ('conv.py', conv.conv_general_dilated)):
    one = lambda w, xi, fn=fn: jnp.sum(fn(xi, w, (1, 1), 'SAME',
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC')) ** 2)
    in_loop = lambda w, x, one=one: jax.lax.map(lambda xi: one(w, xi), x).sum()
    unrolled = lambda w, x, one=one: sum(one(w, x[i]) for i in range(x.shape[0]))
    for where, loss in (('lax.map', in_loop), ('unrolled', unrolled)):
      seconds = timed(jax.grad(loss), w, x)
      print(f'conv_in_loop {name:8s} {where:9s} weight gradient {seconds:.3f} s', flush=True)


def graph_profile():
  num_nodes = 26
  gnn = egnn.EdgeLabelingGNN(3, 96, 96, 0.1)
  key = jax.random.PRNGKey(0)
  nodes = jax.random.normal(key, (FLAGS.graphs, num_nodes, 128))
  labels = jnp.concatenate([jnp.repeat(jnp.arange(5), 5), jnp.full((1,), -1)])
  edges = jnp.broadcast_to(egnn.initial_edges(labels), (FLAGS.graphs, num_nodes, num_nodes, 2))
  variables = gnn.init({'params': key, 'dropout': key}, nodes, edges, train=False)

  def loss(params, nodes):
    out, _ = gnn.apply({**variables, 'params': params}, nodes, edges, train=True,
                       rngs={'dropout': key}, mutable=['batch_stats'])
    return jnp.sum(jnp.log(out[..., 0] + 1e-3))
  grad = jax.jit(jax.grad(loss))
  print(f'graph_profile forward+backward {timed(grad, variables["params"], nodes):.3f} s',
        flush=True)
  compiled = grad.lower(variables['params'], nodes).compile()
  profile = benchmark.step_profile(compiled, lambda: compiled(variables['params'], nodes), top=10)
  for kind, ms, share in profile['by_kind'][:10]:
    print(f'graph_profile   {ms:8.1f} ms {100 * share:5.1f}%  {kind}')
  for name, kind, ms, share in profile['top_ops']:
    print(f'graph_profile   {ms:8.1f} ms {100 * share:5.1f}%  {name} ({kind})')

CASES = {'matmul': matmul, 'conv_stack': conv_stack, 'batchnorm': batchnorm_case,
         'conv_in_loop': conv_in_loop, 'graph_profile': graph_profile}


def main(argv):
  del argv
  for case in FLAGS.cases:
    if case not in CASES:
      raise app.UsageError(f'Unknown case {case!r}; known: {", ".join(CASES)}.')
  print(f'JAX {jax.__version__}, {FLAGS.images} images, {FLAGS.graphs} graphs, '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  for case in FLAGS.cases:
    CASES[case]()


if __name__ == '__main__':
  app.run(main)
