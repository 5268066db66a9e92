"""A NumPy transcription of EGNN's equations, one graph at a time, for the tests."""

import numpy as np


def l1_rows(x):
  return x / np.maximum(np.abs(x).sum(axis=1, keepdims=True), 1e-12)


def node_input(nodes, edges):
  """[own, same-channel average, different-channel average] (Eq. 3 before the MLP)."""
  n = nodes.shape[0]
  parts = [nodes]
  for c in range(2):
    w = edges[:, :, c] * (1 - np.eye(n))
    parts.append(l1_rows(w) @ nodes)
  return np.concatenate(parts, axis=1)


def edge_update(similarity, edges):
  """Eq. 4-5 with the reference's +1e-6 before the channel normalisation."""
  n = edges.shape[0]
  out = np.zeros_like(edges)
  for c, f in enumerate((similarity, 1 - similarity)):
    e = edges[:, :, c] * (1 - np.eye(n))
    out[:, :, c] = l1_rows(f * e) * e.sum(axis=1, keepdims=True)
  out[:, :, 0] += np.eye(n)
  out += 1e-6
  return out / out.sum(axis=2, keepdims=True)


def balanced_loss(p_same, labels, is_query):
  """Mean -log p over positive query edges plus mean -log(1-p) over negative ones."""
  pos, neg = [], []
  n = len(labels)
  for i in range(n):
    for j in range(n):
      if i == j or not (is_query[i] or is_query[j]) or labels[i] < 0 or labels[j] < 0:
        continue
      if labels[i] == labels[j]:
        pos.append(-np.log(p_same[i, j]))
      else:
        neg.append(-np.log(1 - p_same[i, j]))
  return (np.mean(pos) if pos else 0.0) + (np.mean(neg) if neg else 0.0)


# --- One training forward of a meta-batch, as the official code computes it. -----------------
# Shapes follow the reference's `train.py`: `[B, N, ...]` for B episodes of N nodes
# (labelled supports first, then queries). Parameters are fsl_jax's (channels last).


def leaky_relu(x, slope):
  return np.where(x >= 0, x, slope * x)


def conv3x3(x, kernel, padding):
  """`[n, h, w, c] * [3, 3, c, o]`, stride 1, 'SAME' or 'VALID', no bias."""
  if padding == 'SAME':
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1] - 2, x.shape[2] - 2
  out = np.zeros(x.shape[:1] + (h, w, kernel.shape[-1]))
  for i in range(3):
    for j in range(3):
      out += np.einsum('nhwc,co->nhwo', x[:, i:i + h, j:j + w], kernel[i, j])
  return out


def max_pool2(x):
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class BatchNormTrain:
  """PyTorch's BatchNorm in training mode over all axes but the last: it
  normalises with the biased variance and records, per call, the batch mean and
  the variance its running average takes (unbiased if `unbiased`)."""

  def __init__(self, unbiased):
    self.unbiased, self.calls = unbiased, []

  def __call__(self, x, scale, bias, eps=1e-5):
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    n = x.size // x.shape[-1]
    self.calls.append((mean, var * n / (n - 1) if self.unbiased else var))
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def egnn_conv4(x, p, bn, padding=('SAME', 'VALID', 'SAME', 'SAME')):
  """EGNN's embedding (dropout off) on `[n, h, w, 3]`, BatchNorm over the n images."""
  for i, pad in enumerate(padding):
    x = conv3x3(x, p[f'Conv_{i}']['kernel'], pad)
    x = bn(x, p[f'BatchNorm_{i}']['scale'], p[f'BatchNorm_{i}']['bias'])
    x = leaky_relu(max_pool2(x), 0.2)
  x = x.reshape(x.shape[0], -1) @ p['Dense_0']['kernel']
  return bn(x, p['BatchNorm_4']['scale'], 0.0)


def running_averages(calls, mean, var, momentum=0.9):
  """The running averages of each BatchNorm after `calls` in order; `calls[k]` is
  the list of (mean, var) of every BatchNorm in the k-th call of the network."""
  mean, var = list(mean), list(var)
  for call in calls:
    for i, (m, v) in enumerate(call):
      mean[i] = momentum * mean[i] + (1 - momentum) * m
      var[i] = momentum * var[i] + (1 - momentum) * v
  return mean, var


def graph_layers(nodes, edges, layers, node_width, bn):
  """The reference's `GraphNetwork` on `[G, n, d]` nodes and `[G, n, n, 2]` edges,
  BatchNorm over all G graphs. `layers[l]` holds layer l's parameters; kernels
  whose inputs fsl_jax zero-pads (`egnn.GraphLayer`) are cut to the real rows.

  Returns the edges after each layer.
  """
  out = []
  for p in layers:
    d = nodes.shape[-1]
    x = np.stack([node_input(v, e) for v, e in zip(nodes, edges, strict=True)])
    k0 = p['NodeUpdate_0']['Dense_0']['kernel']
    rows = np.concatenate([np.arange(d) + b * node_width for b in range(3)])
    x = x @ k0[rows]
    for i, kernel in enumerate((None, p['NodeUpdate_0']['Dense_1']['kernel'])):
      if kernel is not None:
        x = x @ kernel
      q = p['NodeUpdate_0'][f'BatchNorm_{i}']
      x = leaky_relu(bn(x, q['scale'], q['bias']), 0.01)
    nodes = x
    x = np.abs(nodes[:, :, None, :] - nodes[:, None, :, :])
    for i in range(4):
      x = x @ p['EdgeUpdate_0'][f'Dense_{i}']['kernel']
      q = p['EdgeUpdate_0'][f'BatchNorm_{i}']
      x = leaky_relu(bn(x, q['scale'], q['bias']), 0.01)
    last = p['EdgeUpdate_0']['Dense_4']
    similarity = 1 / (1 + np.exp(-(x @ last['kernel'] + last['bias'])[..., 0]))
    edges = np.stack([edge_update(s, e) for s, e in zip(similarity, edges, strict=True)])
    out.append(edges)
  return out


def reference_masks(num_supports, num_nodes, transductive):
  """`query_edge_mask * evaluation_mask` of the reference's `train.py`: edges with
  a query endpoint, diagonal included; non-transductive, without the query block."""
  mask = np.ones((num_nodes, num_nodes))
  mask[:num_supports, :num_supports] = 0
  if not transductive:
    mask[num_supports:, num_supports:] = 0
  return mask


def meta_batch_edge_loss(p_same, target, mask):
  """The reference's balanced loss: positive and negative means over every
  masked edge of the meta-batch (`[B, N, N]` arrays)."""
  pos, neg = mask * target, mask * (1 - target)
  return (np.sum(-np.log(p_same) * pos) / pos.sum()
          + np.sum(-np.log(1 - p_same) * neg) / neg.sum())
