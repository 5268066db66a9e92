"""Importing the official EGNN's PyTorch weights (`fsl_jax.models.egnn_torch`).

The state dicts are built in NumPy with the reference's key names and layouts
(`model.py` of jmkim0309/fewshot-egnn), and the reference's evaluation forward
is written out in NumPy on those layouts (NCHW maps, `[out, in]` weights, the
Linear's bias and the BatchNorm1d's shift that fsl_jax folds in).
"""

import os
import sys

import egnn_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.models import backbones, egnn, egnn_torch

CHANNELS, EMBED, WIDTH, LAYERS, SIZE = (4, 6, 8, 16), 8, 6, 2, 36  # 36x36 ends at 2x2x16.
WAY, SHOT, QUERY = 3, 2, 2
PADS = (1, 0, 1, 1)


def _bn(rng, n, var=1.0):
  return {'weight': 1 + 0.3 * rng.normal(size=n), 'bias': rng.normal(size=n),
          'running_mean': rng.normal(size=n), 'running_var': var * rng.uniform(0.5, 2.0, size=n),
          'num_batches_tracked': np.array(7)}


def _state_dicts(seed=0, channels=CHANNELS, embed=EMBED, width=WIDTH, layers=LAYERS,
                 final_hw=4):
  """Reference-layout state dicts; the similarity logits are kept small, away from
  the sigmoid's saturation, where float32 has too few digits to compare with."""
  rng = np.random.default_rng(seed)
  enc, c_in = {}, 3
  for i, c in enumerate(channels):
    enc[f'conv_{i + 1}.0.weight'] = rng.normal(size=(c, c_in, 3, 3)) / np.sqrt(9 * c_in)
    enc.update({f'conv_{i + 1}.1.{k}': v for k, v in _bn(rng, c).items()})
    c_in = c
  enc['layer_last.0.weight'] = rng.normal(size=(embed, c_in * final_hw)) / np.sqrt(c_in * final_hw)
  enc['layer_last.0.bias'] = rng.normal(size=embed)
  enc.update({f'layer_last.1.{k}': v for k, v in _bn(rng, embed).items()})
  gnn = {}
  for layer in range(layers):
    d_in = embed if layer == 0 else width
    node = f'edge2node_net{layer}.network'
    for i, (o, n_in) in enumerate(((2 * width, 3 * d_in), (width, 2 * width))):
      gnn[f'{node}.conv{i}.weight'] = rng.normal(size=(o, n_in, 1, 1)) / np.sqrt(n_in)
      gnn.update({f'{node}.norm{i}.{k}': v for k, v in _bn(rng, o, 0.3).items()})
    edge, n_in = f'node2edge_net{layer}.sim_network', width
    for i, o in enumerate((2 * width, 2 * width, width, width)):
      gnn[f'{edge}.conv{i}.weight'] = rng.normal(size=(o, n_in, 1, 1)) / np.sqrt(n_in)
      gnn.update({f'{edge}.norm{i}.{k}': v for k, v in _bn(rng, o, 0.3).items()})
      n_in = o
    gnn[f'{edge}.conv_out.weight'] = 0.3 * rng.normal(size=(1, n_in, 1, 1)) / np.sqrt(n_in)
    gnn[f'{edge}.conv_out.bias'] = 0.1 * rng.normal(size=1)
  return enc, gnn


def _bn_eval(x, sd, prefix, axis):
  shape = [1] * x.ndim
  shape[axis] = -1
  get = lambda k: sd[f'{prefix}.{k}'].reshape(shape)
  return (x - get('running_mean')) / np.sqrt(get('running_var') + 1e-5) * get('weight') + get(
    'bias')


def _conv_nchw(x, w, pad):
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  h, wd = x.shape[2] - 2, x.shape[3] - 2
  return sum(np.einsum('nchw,oc->nohw', x[:, :, i:i + h, j:j + wd], w[:, :, i, j])
             for i in range(3) for j in range(3))


def _reference_eval(enc, gnn, images, support_labels):
  """The reference's `eval()` forward of one transductive episode, on its layouts."""
  x = images.transpose(0, 3, 1, 2)  # NCHW
  for i, pad in enumerate(PADS):
    x = _bn_eval(_conv_nchw(x, enc[f'conv_{i + 1}.0.weight'], pad), enc, f'conv_{i + 1}.1', 1)
    n, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max((3, 5))
    x = ref.leaky_relu(x, 0.2)
  x = x.reshape(x.shape[0], -1) @ enc['layer_last.0.weight'].T + enc['layer_last.0.bias']
  nodes = embeddings = _bn_eval(x, enc, 'layer_last.1', 1)
  per_layer = []
  num_supports = len(support_labels)
  labels = np.concatenate([support_labels, -np.ones(len(nodes) - num_supports, int)])
  edges = np.asarray(egnn.initial_edges(jnp.asarray(labels)), np.float64)
  conv = lambda v, key: v @ gnn[key][:, :, 0, 0].T
  for layer in range(LAYERS):
    node = f'edge2node_net{layer}.network'
    v = ref.node_input(nodes, edges)
    for i in range(2):
      v = ref.leaky_relu(_bn_eval(conv(v, f'{node}.conv{i}.weight'), gnn, f'{node}.norm{i}', -1),
                         0.01)
    nodes = v
    edge = f'node2edge_net{layer}.sim_network'
    e = np.abs(nodes[:, None] - nodes[None, :])
    for i in range(4):
      e = ref.leaky_relu(_bn_eval(conv(e, f'{edge}.conv{i}.weight'), gnn, f'{edge}.norm{i}', -1),
                         0.01)
    logit = conv(e, f'{edge}.conv_out.weight')[..., 0] + gnn[f'{edge}.conv_out.bias'][0]
    edges = ref.edge_update(1 / (1 + np.exp(-logit)), edges)
    per_layer.append(edges)
  logits = edges[num_supports:, :num_supports, 0] @ np.eye(WAY)[support_labels]
  return embeddings, np.stack(per_layer), logits


def _model():
  backbone = backbones.EGNNConv4(features=CHANNELS, embed_dim=EMBED)
  return egnn.EGNN(backbone, egnn.EdgeLabelingGNN(LAYERS, WIDTH, WIDTH), transductive=True,
                   edge_loss_weights=(0.5, 1.0))


def _episode(seed=1):
  rng = np.random.default_rng(seed)
  support_labels = np.repeat(rng.permutation(WAY), SHOT).astype(np.int32)
  images = rng.normal(size=(WAY * (SHOT + QUERY), SIZE, SIZE, 3)).astype(np.float32)
  return images, support_labels


def _template(model, images, support_labels):
  s = WAY * SHOT
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images[:s], support_labels,
                                             images[s:], way=WAY, train=False))
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)


def test_converted_weights_give_the_reference_evaluation():
  enc, gnn = _state_dicts()
  images, support_labels = _episode()
  model = _model()
  variables = egnn_torch.convert(enc, gnn, _template(model, images, support_labels))
  s = WAY * SHOT
  outputs = jax.jit(lambda v: model.apply(v, images[:s], support_labels, images[s:], way=WAY,
                                          train=False))(variables)
  embeddings = model.backbone.apply(
    {'params': variables['params']['backbone'],
     'batch_stats': variables['batch_stats']['backbone']}, images, train=False)
  want_embeddings, want_edges, want_logits = _reference_eval(
    enc, gnn, images.astype(np.float64), support_labels)
  # fsl_jax's embedding has no shift: the reference's is fsl_jax's + beta.
  np.testing.assert_allclose(embeddings + enc['layer_last.1.bias'], want_embeddings, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(outputs.aux['edges'][:, 0], want_edges, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(outputs.logits, want_logits, rtol=1e-4, atol=1e-5)
  # The folded parameters matter: with another BatchNorm1d shift or Linear bias
  # the reference computes other scores, so the checks above cover the folds.
  for key in ('layer_last.1.bias', 'layer_last.0.bias'):
    moved = dict(enc, **{key: enc[key] + 1.0})
    logits = _reference_eval(moved, gnn, images.astype(np.float64), support_labels)[2]
    assert np.abs(logits - want_logits).max() > 1e-3


def test_data_parallel_prefix_and_torch_names_only():
  enc, gnn = _state_dicts()
  images, support_labels = _episode()
  template = _template(_model(), images, support_labels)
  plain = egnn_torch.convert(enc, gnn, template)
  prefixed = egnn_torch.convert({f'module.{k}': v for k, v in enc.items()}, gnn, template)
  jax.tree.map(np.testing.assert_array_equal, plain, prefixed)


def test_a_missing_key_or_a_wrong_width_names_it():
  enc, gnn = _state_dicts()
  images, support_labels = _episode()
  template = _template(_model(), images, support_labels)
  with pytest.raises(egnn_torch.ConversionError, match=r"'conv_3.1.running_var'"):
    egnn_torch.convert({k: v for k, v in enc.items() if k != 'conv_3.1.running_var'}, gnn,
                       template)
  wide = dict(gnn, **{'node2edge_net1.sim_network.conv3.weight': np.zeros((7, WIDTH, 1, 1))})
  with pytest.raises(egnn_torch.ConversionError, match=r'EdgeUpdate_0/Dense_3/kernel'):
    egnn_torch.convert(enc, wide, template)
  extra = dict(gnn, **{f'edge2node_net{LAYERS}.network.conv0.weight': np.zeros((1, 1, 1, 1))})
  with pytest.raises(egnn_torch.ConversionError, match='more than 2 graph layers'):
    egnn_torch.convert(enc, extra, template)


def test_binary_writes_a_workdir_that_restores_the_weights(tmp_path):
  # The official miniImageNet model's shapes: 64-96-128-256 channels, a 5x5 map,
  # 128-d embedding, 3 graph layers of width 96.
  from helpers import load_config

  from fsl_jax import config as config_lib
  from fsl_jax.training import train

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from experiments import convert_egnn_reference as binary

  enc, gnn = _state_dicts(channels=(64, 96, 128, 256), embed=128, width=96, layers=3,
                          final_hw=25)
  config = load_config('egnn_mini_imagenet', '5way5shot')
  workdir = str(tmp_path / 'official')
  binary.convert_to_workdir(config, enc, gnn, workdir, 84)
  _, model = train.build(config)
  state = train._restore(config, model, workdir, 'best', (84, 84, 3))
  np.testing.assert_array_equal(state.params['backbone']['Conv_0']['kernel'],
                                enc['conv_1.0.weight'].astype(np.float32).transpose(2, 3, 1, 0))
  np.testing.assert_allclose(state.batch_stats['backbone']['BatchNorm_4']['mean'],
                             enc['layer_last.1.running_mean'] - enc['layer_last.0.bias'],
                             rtol=1e-5, atol=1e-6)
  assert int(state.step) == 1
  with pytest.raises(config_lib.ConfigError, match='holds a checkpoint already'):
    binary.convert_to_workdir(config, enc, gnn, workdir, 84)
  config.method = 'protonet'
  with pytest.raises(egnn_torch.ConversionError, match='egnn config'):
    binary.convert_to_workdir(config, enc, gnn, str(tmp_path / 'other'), 84)
