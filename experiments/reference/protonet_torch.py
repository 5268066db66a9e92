"""Prototypical Networks in PyTorch, written from the paper, to check fsl_jax's training.

Snell et al. 2017: Conv-4 (four blocks of 3x3 conv with 64 filters, BatchNorm,
ReLU, 2x2 max-pool), prototypes as class means of the support embeddings,
logits as negative squared Euclidean distances, cross-entropy over the queries,
Adam. Supports and queries are embedded in one batch, so BatchNorm uses the
statistics of the whole episode, in training mode.

It reads what `experiments/compare_protonet_torch.py` writes: the initial
parameters and the exact training episodes of an fsl_jax run (`.npz`), trains
on them step by step, and writes each step's loss and accuracy (before the
update) as JSON, with the conv kernels' gradients of the first step (in
float32 as trained, and in float64) and the kernels after the last step
(`.npz` files beside it). It runs in a virtual environment with torch; fsl_jax
does not depend on it, and no test imports it.

    /tmp/torchvenv/bin/python experiments/reference/protonet_torch.py IN.npz OUT.json
"""

import json
import sys

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Conv4(nn.Module):

  def __init__(self, channels: int, filters: int, blocks: int = 4, eps: float = 1e-5):
    super().__init__()
    self.convs = nn.ModuleList()
    self.norms = nn.ModuleList()
    for i in range(blocks):
      self.convs.append(nn.Conv2d(channels if i == 0 else filters, filters, 3, padding=1,
                                  bias=False))
      self.norms.append(nn.BatchNorm2d(filters, eps=eps))

  def forward(self, x):
    for conv, norm in zip(self.convs, self.norms, strict=True):
      x = F.max_pool2d(F.relu(norm(conv(x))), 2)
    return x.flatten(1)


def load_parameters(model: Conv4, arrays) -> None:
  """fsl_jax's parameters (`block{i}_kernel` HWIO, `block{i}_scale`, `block{i}_bias`)."""
  with torch.no_grad():
    for i, (conv, norm) in enumerate(zip(model.convs, model.norms, strict=True)):
      conv.weight.copy_(torch.from_numpy(arrays[f'block{i}_kernel'].transpose(3, 2, 0, 1)))
      norm.weight.copy_(torch.from_numpy(arrays[f'block{i}_scale']))
      norm.bias.copy_(torch.from_numpy(arrays[f'block{i}_bias']))


def episode_loss(model, data, step: int, way: int, dtype=torch.float32):
  """The loss and logits of episode `step`: supports and queries in one batch."""
  support = torch.from_numpy(data['support_images'][step]).permute(0, 3, 1, 2).to(dtype)
  query = torch.from_numpy(data['query_images'][step]).permute(0, 3, 1, 2).to(dtype)
  support_labels = torch.from_numpy(data['support_labels'][step]).long()
  query_labels = torch.from_numpy(data['query_labels'][step]).long()
  embeddings = model(torch.cat([support, query]))
  support_emb, query_emb = embeddings[:len(support)], embeddings[len(support):]
  one_hot = F.one_hot(support_labels, way).to(dtype)
  prototypes = one_hot.T @ support_emb / one_hot.sum(0)[:, None]
  logits = -((query_emb[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)
  return F.cross_entropy(logits, query_labels), logits, query_labels


def kernel_gradients(model) -> dict[str, np.ndarray]:
  return {f'block{i}_kernel': conv.weight.grad.double().numpy().transpose(2, 3, 1, 0).copy()
          for i, conv in enumerate(model.convs)}


def main(source: str, target: str) -> None:
  torch.manual_seed(0)
  torch.set_num_threads(int(np.load(source)['threads']))
  data = np.load(source)
  steps, way = int(data['steps']), int(data['way'])
  model = Conv4(data['support_images'].shape[-1], data['block0_kernel'].shape[-1],
                blocks=int(data['blocks']))
  load_parameters(model, data)
  model.train()
  # The first step's gradients in float64 too: how far float32 rounding alone moves them.
  model64 = Conv4(data['support_images'].shape[-1], data['block0_kernel'].shape[-1],
                  blocks=int(data['blocks'])).double()
  load_parameters(model64, data)
  model64.train()
  episode_loss(model64, data, 0, way, torch.float64)[0].backward()
  gradients64 = kernel_gradients(model64)
  optimizer = torch.optim.Adam(model.parameters(), lr=float(data['learning_rate']))
  rows = []
  for step in range(steps):
    loss, logits, query_labels = episode_loss(model, data, step, way)
    optimizer.zero_grad()
    loss.backward()
    if step == 0:
      gradients = kernel_gradients(model)
    optimizer.step()
    rows.append({'step': step + 1, 'loss': loss.item(),
                 'accuracy': (logits.argmax(-1) == query_labels).float().mean().item()})
  final = {f'block{i}_kernel': conv.weight.detach().numpy().transpose(2, 3, 1, 0)
           for i, conv in enumerate(model.convs)}
  np.savez(target + '.params.npz', **final)
  np.savez(target + '.gradients.npz', **gradients)
  np.savez(target + '.gradients64.npz', **gradients64)
  with open(target, 'w') as f:
    json.dump({'torch_version': torch.__version__, 'steps': rows}, f)


if __name__ == '__main__':
  main(*sys.argv[1:])
