"""The official PyTorch EGNN's weights as fsl_jax `egnn` variables.

The official code (jmkim0309/fewshot-egnn) saves `enc_module_state_dict` (its
`EmbeddingImagenet`) and `gnn_module_state_dict` (its `GraphNetwork`).
`convert` maps them, as NumPy arrays, onto the variables of an `egnn` model
with the `egnn_conv4` embedding; `experiments/convert_egnn_reference.py` reads
the `.pth.tar` file with torch and writes an fsl_jax workdir that
`experiments/evaluate.py` tests under fsl_jax's protocol. Nothing here imports
torch.

Layouts: conv weights `[out, in, kh, kw]` become `[kh, kw, in, out]`; the 1x1
convs of the graph layers, `[out, in, 1, 1]`, become Dense kernels `[in, out]`;
the last Linear's input is PyTorch's flattening of a `[C, h, w]` map, fsl_jax's
of `[h, w, C]`. BatchNorm weight, bias, running mean and running variance become
`scale`, `bias`, `mean` and `var`.

Two reference parameters have no fsl_jax counterpart and are folded in, exactly,
in training and in evaluation:
  * the last Linear's bias `b`, which the following BatchNorm1d subtracts again:
    its running mean becomes `running_mean - b` (in training the batch mean
    removes it);
  * that BatchNorm1d's shift `beta`, which moves every embedding by `beta`. The
    first graph layer's node MLP sees `[v, same-class average, different-class
    average]`, each moved by `beta` (the averages' weights sum to 1: every row
    has a positive weight, as each graph holds a query at 0.5), so its first
    1x1 conv adds `W0 [beta; beta; beta]` to every node, which its BatchNorm
    subtracts: the running mean becomes `running_mean - W0 [beta; beta; beta]`.
    The first edge update sees the new node features only, so nothing else moves.
Later graph layers read 96 features where fsl_jax carries 128 (see
`egnn.GraphLayer`): their kernels are placed on the rows of the real features,
zeros elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

_BN = {'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean', 'running_var': 'var'}


class ConversionError(ValueError):
  """A state dict that does not fit the model (a key missing or a shape that differs)."""


def _strip(state_dict: Mapping) -> dict:
  """Keys without a `module.` prefix (a model saved inside `nn.DataParallel`)."""
  return {re.sub(r'^module\.', '', k): np.asarray(v, np.float32) for k, v in state_dict.items()
          if not k.endswith('num_batches_tracked')}


def _get(state_dict: dict, key: str, what: str) -> np.ndarray:
  if key not in state_dict:
    known = ', '.join(sorted(state_dict)[:6])
    raise ConversionError(f'The {what} state dict has no {key!r} (its keys start: {known}); is '
                          "it the official EGNN's EmbeddingImagenet / GraphNetwork?")
  return state_dict[key]


def _put(tree: dict, path: tuple, value: np.ndarray, index=None) -> None:
  """Writes `value` at `tree[path]` (at `[index]` of a stacked leaf), shapes checked."""
  node = tree
  for key in path[:-1]:
    node = node[key]
  target = np.asarray(node[path[-1]])
  shape = target.shape[1:] if index is not None else target.shape
  if tuple(value.shape) != tuple(shape):
    raise ConversionError(f'{"/".join(path)}: the checkpoint gives shape {tuple(value.shape)}, '
                          f'the model has {tuple(shape)}; build the model with the '
                          "checkpoint's widths (embedding, node and edge features, layers).")
  if index is None:
    node[path[-1]] = value.astype(np.float32)
  else:
    target = np.array(target, np.float32)
    target[index] = value
    node[path[-1]] = target


def _batch_norm(tree_params, tree_stats, path, sd, prefix, what, index=None):
  for torch_name, name in _BN.items():
    value = _get(sd, f'{prefix}.{torch_name}', what)
    if name in ('scale', 'bias'):
      if name in _node(tree_params, path):
        _put(tree_params, path + (name,), value, index)
    else:
      _put(tree_stats, path + (name,), value, index)


def _node(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def convert(enc_state_dict: Mapping, gnn_state_dict: Mapping, variables: Mapping) -> dict:
  """The reference's weights in the layout of `variables` (an `egnn` model's).

  Args:
    enc_state_dict: the reference's `enc_module_state_dict` (`EmbeddingImagenet`),
      arrays or tensors converted with `.numpy()`.
    gnn_state_dict: its `gnn_module_state_dict` (`GraphNetwork`).
    variables: `{'params', 'batch_stats'}` of the target model, for the shapes
      (e.g. from `model.init`); not modified.

  Returns:
    New variables holding the reference's weights, float32 NumPy arrays.

  Raises:
    ConversionError: a key is missing or a shape differs; the message names it.
  """
  enc, gnn = _strip(enc_state_dict), _strip(gnn_state_dict)
  params = _copy(variables['params'])
  stats = _copy(variables['batch_stats'])
  # The embedding.
  for i in range(4):
    weight = _get(enc, f'conv_{i + 1}.0.weight', 'encoder')
    _put(params, ('backbone', f'Conv_{i}', 'kernel'), weight.transpose(2, 3, 1, 0))
    _batch_norm(params, stats, ('backbone', f'BatchNorm_{i}'), enc, f'conv_{i + 1}.1', 'encoder')
  linear, linear_bias = (_get(enc, f'layer_last.0.{n}', 'encoder') for n in ('weight', 'bias'))
  channels = enc['conv_4.0.weight'].shape[0]
  out, flat = linear.shape
  hw = flat // channels
  side = int(round(hw ** 0.5))
  if side * side * channels != flat:
    raise ConversionError(f'layer_last.0.weight has {flat} inputs, not a square map of '
                          f'{channels} channels.')
  kernel = linear.reshape(out, channels, side, side).transpose(2, 3, 1, 0).reshape(flat, out)
  _put(params, ('backbone', 'Dense_0', 'kernel'), kernel)
  _batch_norm(params, stats, ('backbone', 'BatchNorm_4'), enc, 'layer_last.1', 'encoder')
  stats['backbone']['BatchNorm_4']['mean'] = (
    stats['backbone']['BatchNorm_4']['mean'] - linear_bias)  # The Linear's bias, folded.
  beta = _get(enc, 'layer_last.1.bias', 'encoder')  # The BatchNorm1d's shift, folded below.
  # The graph layers, stacked on a leading axis.
  layers = params['gnn']['layers']
  num_layers = np.asarray(layers['NodeUpdate_0']['Dense_0']['kernel']).shape[0]
  width = np.asarray(layers['NodeUpdate_0']['Dense_0']['kernel']).shape[1] // 3
  if f'edge2node_net{num_layers}.network.conv0.weight' in gnn:
    raise ConversionError(f'The checkpoint has more than {num_layers} graph layers; set '
                          'num_layers to match.')
  for layer in range(num_layers):
    node = f'edge2node_net{layer}.network'
    w0 = _get(gnn, f'{node}.conv0.weight', 'graph')[:, :, 0, 0]  # [out, 3 d_in]
    d_in = w0.shape[1] // 3
    rows = np.concatenate([np.arange(d_in) + b * width for b in range(3)])
    k0 = np.zeros((3 * width, w0.shape[0]), np.float32)
    k0[rows] = w0.T
    path = ('gnn', 'layers', 'NodeUpdate_0')
    _put(params, path + ('Dense_0', 'kernel'), k0, layer)
    w1 = _get(gnn, f'{node}.conv1.weight', 'graph')[:, :, 0, 0]
    _put(params, path + ('Dense_1', 'kernel'), w1.T, layer)
    for i in range(2):
      _batch_norm(params, stats, path + (f'BatchNorm_{i}',), gnn, f'{node}.norm{i}', 'graph', layer)
    if layer == 0:
      shift = w0 @ np.concatenate([beta] * 3)
      bn = stats['gnn']['layers']['NodeUpdate_0']['BatchNorm_0']
      bn['mean'] = np.array(bn['mean'], np.float32)
      bn['mean'][0] -= shift
    edge = f'node2edge_net{layer}.sim_network'
    path = ('gnn', 'layers', 'EdgeUpdate_0')
    for i in range(4):
      w = _get(gnn, f'{edge}.conv{i}.weight', 'graph')[:, :, 0, 0]
      _put(params, path + (f'Dense_{i}', 'kernel'), w.T, layer)
      _batch_norm(params, stats, path + (f'BatchNorm_{i}',), gnn, f'{edge}.norm{i}', 'graph', layer)
    w = _get(gnn, f'{edge}.conv_out.weight', 'graph')[:, :, 0, 0]
    _put(params, path + ('Dense_4', 'kernel'), w.T, layer)
    _put(params, path + ('Dense_4', 'bias'), _get(gnn, f'{edge}.conv_out.bias', 'graph'), layer)
  return {'params': params, 'batch_stats': stats}


def _copy(tree):
  if isinstance(tree, Mapping):
    return {k: _copy(v) for k, v in tree.items()}
  return np.array(tree, np.float32)
