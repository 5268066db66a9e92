"""MAML in PyTorch, written from the paper, to check and to time fsl_jax's MAML.

Finn et al. 2017 on Omniglot (the official code's network): four blocks of a
3x3 convolution with TensorFlow's 'SAME' padding and stride 2, BatchNorm with
an offset and no scale, normalising by the statistics of the batch passed in
(no running averages), ReLU; the mean over the final 2x2 map; a linear head.
The inner loop takes SGD steps of size `inner_lr` on the supports' summed
cross-entropy over the shot (`way` times the mean), adapting the conv kernels
and the head; the BatchNorm offsets are meta-learned only. The meta-objective
is the mean query cross-entropy at the adapted parameters, differentiated
through the inner loop (`create_graph=True`) or, first order, not. Queries are
normalised by the query batch's statistics (the paper's transductive protocol).

Two implementations of the meta-batch, both idiomatic PyTorch:
  * `loop`: a Python loop over the episodes, each adapted with
    `torch.autograd.grad` and its query loss back-propagated at once (as
    learn2learn's and `higher`'s MAML examples do).
  * `vmap`: `torch.func.vmap` over the episodes of `torch.func.grad` of the
    query loss, the inner gradients by a nested `torch.func.grad` (functorch's
    MAML example's approach), one backward for the meta-batch.

Commands (run with a Python that has torch; fsl_jax does not depend on it and
no test imports this file):

    python maml_torch.py check IN.npz OUT.npz
      Reads fsl_jax's parameters and a meta-batch of episodes (written by
      `experiments/compare_maml_torch.py`), writes the meta-loss and the
      meta-gradients (second and first order, float32 and float64) and the
      test-time logits of the first episode.
    python maml_torch.py bench --impl=loop --meta_batch_size=32 ...
      Times training steps (meta-gradient and an Adam update) and evaluation
      (the same implementation's inner loop, first order, then the queries'
      predictions) on random images of the given shapes; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from torch.nn import functional as F

EPS = 1e-3  # The official BatchNorm epsilon.


def conv_same(x: torch.Tensor, kernel: torch.Tensor, stride: int) -> torch.Tensor:
  """A 3x3 convolution with TensorFlow's 'SAME' padding (more at the bottom/right)."""
  h, w = x.shape[-2:]
  pad_h = max((math.ceil(h / stride) - 1) * stride + 3 - h, 0)
  pad_w = max((math.ceil(w / stride) - 1) * stride + 3 - w, 0)
  x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
  return F.conv2d(x, kernel, stride=stride)


def network(params: dict, images: torch.Tensor, blocks: int) -> torch.Tensor:
  """`[N, C, H, W]` -> `[N, way]` logits; BatchNorm by the batch's own statistics."""
  x = images
  for i in range(blocks):
    x = conv_same(x, params[f'block{i}_kernel'], 2)
    x = F.batch_norm(x, None, None, None, params[f'block{i}_offset'], training=True, eps=EPS)
    x = F.relu(x)
  return x.mean((2, 3)) @ params['head_kernel'] + params['head_bias']


def adapted(params: dict) -> list[str]:
  return [k for k in params if k.endswith('_kernel') or k == 'head_bias']


def adapt(params, support, labels, *, way, steps, lr, first_order, blocks):
  """The inner loop with `torch.autograd.grad`: the adapted parameter dict."""
  fast = {k: params[k] for k in adapted(params)}
  for _ in range(steps):
    loss = F.cross_entropy(network({**params, **fast}, support, blocks), labels) * way
    grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
    fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads, strict=True)}
  return {**params, **fast}


def query_loss(params, support, support_labels, query, query_labels, *, way, steps, lr,
               first_order, blocks):
  p = adapt(params, support, support_labels, way=way, steps=steps, lr=lr,
            first_order=first_order, blocks=blocks)
  return F.cross_entropy(network(p, query, blocks), query_labels)


def meta_gradients_loop(params, batch, *, way, steps, lr, first_order, blocks):
  """Mean query loss over the episodes, each back-propagated as it is computed."""
  for p in params.values():
    p.grad = None
  total, n = 0.0, batch[0].shape[0]
  for e in range(n):
    loss = query_loss(params, *(b[e] for b in batch), way=way, steps=steps, lr=lr,
                      first_order=first_order, blocks=blocks) / n
    loss.backward()
    total += loss.item()
  return total, {k: p.grad for k, p in params.items()}


def meta_gradients_vmap(params, batch, *, way, steps, lr, first_order, blocks):
  """The same with `torch.func`: vmap over episodes of grad of the query loss."""
  from torch.func import grad, vmap

  names = adapted(params)

  def inner(fast, rest, support, labels):
    return F.cross_entropy(network({**rest, **fast}, support, blocks), labels) * way

  def episode(p, support, support_labels, query, query_labels):
    rest = {k: v for k, v in p.items() if k not in names}
    fast = {k: p[k] for k in names}
    for _ in range(steps):
      g = grad(inner)(fast, rest, support, support_labels)
      if first_order:
        g = {k: v.detach() for k, v in g.items()}
      fast = {k: fast[k] - lr * g[k] for k in names}
    loss = F.cross_entropy(network({**rest, **fast}, query, blocks), query_labels)
    return loss, loss

  grads, losses = vmap(grad(episode, has_aux=True), in_dims=(None, 0, 0, 0, 0))(
    {k: v.detach() for k, v in params.items()}, *batch)
  return losses.mean().item(), {k: g.mean(0) for k, g in grads.items()}


META_GRADIENTS = {'loop': meta_gradients_loop, 'vmap': meta_gradients_vmap}


def predict_loop(params, support, support_labels, query, *, way, steps, lr, blocks):
  """Test-time predictions, episode by episode: first-order inner steps, no meta-gradient."""
  out = []
  for e in range(support.shape[0]):
    p = adapt(params, support[e], support_labels[e], way=way, steps=steps, lr=lr,
              first_order=True, blocks=blocks)
    with torch.no_grad():
      out.append(network(p, query[e], blocks).argmax(-1))
  return torch.stack(out)


def predict_vmap(params, support, support_labels, query, *, way, steps, lr, blocks):
  """The same with `torch.func.vmap` over the episodes."""
  from torch.func import grad, vmap

  names = adapted(params)
  rest = {k: v.detach() for k, v in params.items() if k not in names}

  def inner(fast, images, labels):
    return F.cross_entropy(network({**rest, **fast}, images, blocks), labels) * way

  def episode(images, labels, queries):
    fast = {k: params[k].detach() for k in names}
    for _ in range(steps):
      g = grad(inner)(fast, images, labels)
      fast = {k: fast[k] - lr * g[k] for k in names}
    return network({**rest, **fast}, queries, blocks).argmax(-1)

  return vmap(episode)(support, support_labels, query)


PREDICT = {'loop': predict_loop, 'vmap': predict_vmap}


def to_torch(params_np, dtype) -> dict:
  """fsl_jax's flat dict (HWIO kernels) as leaf tensors (OIHW kernels)."""
  out = {}
  for k, v in params_np.items():
    v = np.asarray(v)
    if k.startswith('block') and k.endswith('_kernel'):
      v = v.transpose(3, 2, 0, 1)
    out[k] = torch.tensor(v, dtype=dtype, requires_grad=True)
  return out


def to_numpy(grads) -> dict:
  return {k: (g.detach().double().numpy().transpose(2, 3, 1, 0) if k.startswith('block') and
              k.endswith('_kernel') else g.detach().double().numpy()) for k, g in grads.items()}


def check(source: str, target: str) -> None:
  data = np.load(source)
  torch.set_num_threads(int(data['threads']))
  names = [str(n) for n in data['param_names']]
  params_np = {k: data[f'param_{k}'] for k in names}
  blocks = sum(k.endswith('_offset') for k in names)
  way, lr = int(data['way']), float(data['inner_lr'])
  out = {}
  for dtype, tag in ((torch.float32, ''), (torch.float64, '64')):
    nchw = lambda a, dtype=dtype: torch.tensor(a, dtype=dtype).permute(0, 1, 4, 2, 3)
    batch = (nchw(data['support_images']), torch.tensor(data['support_labels']).long(),
             nchw(data['query_images']), torch.tensor(data['query_labels']).long())
    for first_order in (False, True):
      for impl, fn in META_GRADIENTS.items():
        params = to_torch(params_np, dtype)
        loss, grads = fn(params, batch, way=way, steps=int(data['inner_steps']), lr=lr,
                         first_order=first_order, blocks=blocks)
        key = f'{"first" if first_order else "second"}_{impl}{tag}'
        out[f'loss_{key}'] = np.float64(loss)
        out.update({f'grad_{key}_{k}': v for k, v in to_numpy(grads).items()})
    params = to_torch(params_np, dtype)
    p = adapt(params, batch[0][0], batch[1][0], way=way, steps=int(data['test_inner_steps']),
              lr=lr, first_order=True, blocks=blocks)
    out[f'test_logits{tag}'] = network(p, batch[2][0], blocks).detach().double().numpy()
    kwargs = dict(way=way, steps=int(data['test_inner_steps']), lr=lr, blocks=blocks)
    loop, vmapped = (PREDICT[impl](params, *batch[:3], **kwargs) for impl in ('loop', 'vmap'))
    out[f'test_predictions_agree{tag}'] = np.float64((loop == vmapped).float().mean().item())
  np.savez(target, torch_version=torch.__version__, **out)


def bench(args) -> None:
  torch.manual_seed(0)
  torch.set_num_threads(args.threads)
  h, w, c = args.image_shape
  blocks, f = 4, args.filters
  params = {}
  for i in range(blocks):
    params[f'block{i}_kernel'] = torch.nn.init.xavier_uniform_(
      torch.empty(f, c if i == 0 else f, 3, 3)).requires_grad_()
    params[f'block{i}_offset'] = torch.zeros(f, requires_grad=True)
  params['head_kernel'] = torch.randn(f, args.way, requires_grad=True)
  params['head_bias'] = torch.zeros(args.way, requires_grad=True)
  optimizer = torch.optim.Adam(params.values(), lr=1e-3)
  fn = META_GRADIENTS[args.impl]

  def episodes(n, shot, query):
    labels = lambda k: torch.arange(args.way).repeat_interleave(k).repeat(n, 1)
    return (torch.randn(n, args.way * shot, c, h, w), labels(shot),
            torch.randn(n, args.way * query, c, h, w), labels(query))

  train_batch = episodes(args.meta_batch_size, args.shot, args.query)

  def train_step():
    _, grads = fn(params, train_batch, way=args.way, steps=args.inner_steps, lr=args.inner_lr,
                  first_order=args.first_order, blocks=blocks)
    for k, p in params.items():
      p.grad = grads[k]
    optimizer.step()

  eval_batch = episodes(args.eval_episodes, args.shot, args.test_query)

  def eval_call():  # No meta-gradient: first-order inner steps, then the predictions.
    PREDICT[args.impl](params, *eval_batch[:3], way=args.way, steps=args.test_inner_steps,
                       lr=args.inner_lr, blocks=blocks)

  def timed(fn, warmup, repeats):
    for _ in range(warmup):
      fn()
    start = time.perf_counter()
    for _ in range(repeats):
      fn()
    return (time.perf_counter() - start) / repeats

  train_s = timed(train_step, 1, args.steps)
  eval_s = timed(eval_call, 1, args.eval_calls)
  print(json.dumps({'torch_version': torch.__version__, 'impl': args.impl,
                    'first_order': args.first_order, 'threads': args.threads,
                    'train_step_s': train_s,
                    'train_episodes_per_s': args.meta_batch_size / train_s,
                    'eval_episodes_per_s': args.eval_episodes / eval_s}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('check')
  p.add_argument('source')
  p.add_argument('target')
  b = sub.add_parser('bench')
  b.add_argument('--impl', choices=sorted(META_GRADIENTS), default='loop')
  b.add_argument('--first_order', action='store_true')
  b.add_argument('--image_shape', type=int, nargs=3, default=[28, 28, 1])
  b.add_argument('--filters', type=int, default=64)
  b.add_argument('--way', type=int, default=5)
  b.add_argument('--shot', type=int, default=1)
  b.add_argument('--query', type=int, default=1)
  b.add_argument('--test_query', type=int, default=15)
  b.add_argument('--meta_batch_size', type=int, default=32)
  b.add_argument('--inner_steps', type=int, default=1)
  b.add_argument('--test_inner_steps', type=int, default=3)
  b.add_argument('--inner_lr', type=float, default=0.4)
  b.add_argument('--steps', type=int, default=5)
  b.add_argument('--eval_calls', type=int, default=2)
  b.add_argument('--eval_episodes', type=int, default=25)
  b.add_argument('--threads', type=int, default=2)
  args = parser.parse_args()
  if args.command == 'check':
    check(args.source, args.target)
  else:
    bench(args)


if __name__ == '__main__':
  main()
