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
