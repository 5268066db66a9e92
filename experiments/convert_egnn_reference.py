"""Imports a checkpoint of the official PyTorch EGNN into an fsl_jax workdir.

The official code (jmkim0309/fewshot-egnn) saves `model_best.pth.tar` with
`enc_module_state_dict` and `gnn_module_state_dict`. This reads it with torch
(`pip install -e '.[torch]'`; torch is not a dependency of the library),
converts the weights (`fsl_jax/models/egnn_torch.py`), and writes a workdir that
`experiments/evaluate.py` tests under fsl_jax's protocol:

    python experiments/convert_egnn_reference.py \
      --checkpoint=trained_models/<exp>/model_best.pth.tar \
      --config=experiments/configs/egnn_mini_imagenet.py:5way5shot \
      --workdir=runs/egnn_official_mini_5shot --config.data_dir=../shared/data
    python experiments/evaluate.py --workdir=runs/egnn_official_mini_5shot --episodes=1000

The config must describe the checkpoint's model (embedding, widths, layers);
a key or shape that does not fit is named. Pixels are normalised with
fsl_jax's statistics, which differ from the reference's constants in the third
decimal.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

if not __package__:  # Run as a script (`python experiments/NAME.py`): the repo on the path.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', None, "The official EGNN's .pth.tar file.")
flags.DEFINE_string('workdir', None, 'A new folder for the fsl_jax workdir.')
flags.DEFINE_integer('image_size', 84, 'Height and width of the RGB images the model takes.')
config_flags.DEFINE_config_file('config', None, 'The config of the same model.',
                                lock_config=True)
flags.mark_flags_as_required(['checkpoint', 'config', 'workdir'])


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def read_torch_checkpoint(path: str) -> tuple[dict, dict]:
  """The two state dicts of an official EGNN checkpoint, as NumPy arrays."""
  try:
    import torch
  except ImportError:
    _fail("reading a PyTorch checkpoint needs torch: pip install -e '.[torch]'.")
  if not os.path.isfile(path):
    _fail(f'--checkpoint {path}: no such file.')
  try:
    checkpoint = torch.load(path, map_location='cpu', weights_only=False)
  except Exception as e:  # noqa: BLE001 (torch raises many kinds for a bad file)
    _fail(f'--checkpoint {path} is not a readable PyTorch checkpoint ({e}).')
  missing = [k for k in ('enc_module_state_dict', 'gnn_module_state_dict')
             if k not in checkpoint]
  if missing:
    _fail(f'--checkpoint {path} has no {", ".join(missing)}; is it a checkpoint of the '
          "official EGNN's train.py?")
  return tuple({k: v.detach().cpu().numpy() for k, v in checkpoint[k].items()}
               for k in ('enc_module_state_dict', 'gnn_module_state_dict'))


def convert_to_workdir(config, enc: dict, gnn: dict, workdir: str, image_size: int) -> None:
  """Converts the state dicts for `config`'s model and writes `workdir`."""
  import jax

  from fsl_jax.models import egnn_torch
  from fsl_jax.training import train

  if config.method != 'egnn':
    raise egnn_torch.ConversionError(f"The config's method is {config.method!r}; the official "
                                     "checkpoints are EGNN's: use an egnn config.")
  _, model = train.build(config)
  image_shape = (image_size, image_size, 3)
  state = jax.eval_shape(lambda: train.create_train_state(config, model, image_shape,
                                                          jax.random.PRNGKey(0)))
  template = jax.tree.map(lambda x: jax.numpy.zeros(x.shape, x.dtype),
                          {'params': state.params, 'batch_stats': state.batch_stats})
  variables = egnn_torch.convert(enc, gnn, template)
  train.save_imported(config, variables, workdir, image_shape)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  common.setup()
  from fsl_jax.models.egnn_torch import ConversionError

  enc, gnn = read_torch_checkpoint(FLAGS.checkpoint)
  with common.user_errors():
    try:
      convert_to_workdir(FLAGS.config, enc, gnn, FLAGS.workdir, FLAGS.image_size)
    except ConversionError as e:
      _fail(str(e))
  print(f'Wrote {FLAGS.workdir}; test it with: python experiments/evaluate.py '
        f'--workdir={FLAGS.workdir}')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
