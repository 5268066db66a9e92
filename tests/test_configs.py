"""Every experiment config loads and validates, in every variant its docstring names."""

import pytest
from helpers import CONFIGS, load_config

from fsl_jax import config as config_lib

VARIANTS = {
  'protonet_omniglot': ['1shot', '5shot', 'tiny', '1shot-trainval', '5shot-trainval'],
  'egnn_omniglot': ['5way1shot', '5way5shot', '20way1shot', '20way5shot',
                    '5way1shot-nontransductive', '20way1shot-nontransductive',
                    '5way1shot-reference', '5way1shot-nontransductive-reference', 'tiny'],
  'protonet_mini_imagenet': ['1shot', '5shot', 'tiny'],
  'egnn_mini_imagenet': ['5way5shot', '5way1shot', '5way5shot-nontransductive', 'tiny'],
  'protonet_tiered_imagenet': ['1shot', '5shot', 'tiny'],
  'protonet_cifar_fs': ['1shot', '5shot', 'tiny'],
  'protonet_fc100': ['1shot', '5shot', 'tiny'],
  'relationnet_omniglot': ['5way1shot', '5way5shot', '20way1shot', '20way5shot', 'tiny'],
  'relationnet_mini_imagenet': ['1shot', '5shot', 'tiny'],
  'siamese_omniglot': ['1shot', '5shot', 'tiny'],
  'matchingnet_omniglot': ['5way1shot', '5way5shot', '20way1shot', '20way5shot', 'tiny'],
  'matchingnet_mini_imagenet': ['1shot', '5shot', 'tiny'],
  'gnn_omniglot': ['5way1shot', '5way5shot', '20way1shot', '20way5shot',
                   '5way1shot-transductive', 'tiny'],
  'gnn_mini_imagenet': ['5way1shot', '5way5shot', '5way5shot-transductive', 'tiny'],
  'tpn_omniglot': ['5way1shot', '5way5shot', '20way1shot', '20way5shot', 'tiny'],
  'tpn_mini_imagenet': ['1shot', '5shot', 'tiny'],
  'maml_omniglot': ['5way1shot', '5way5shot', '20way1shot', '20way5shot',
                    '5way1shot-firstorder', '20way1shot-firstorder-nontransductive',
                    '5way1shot-nontransductive', 'tiny', 'tiny-firstorder'],
  'maml_mini_imagenet': ['5way1shot', '5way5shot', '5way1shot-firstorder',
                         '5way5shot-firstorder-nontransductive', 'tiny'],
}


def test_every_config_file_is_listed():
  names = {p.stem for p in CONFIGS.glob('*.py') if not p.stem.startswith('_')}
  assert names == set(VARIANTS), 'Add the new config and its variants to VARIANTS.'


@pytest.mark.parametrize('name,variant', [(n, v) for n, vs in VARIANTS.items() for v in vs])
def test_config_validates(name, variant):
  config = config_lib.validate(load_config(name, variant), num_devices=1)
  assert config.num_train_steps > 0


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_every_method_field_can_be_set_from_the_command_line(name):
  """`--config.FIELD=...` sets only fields the config has: each method field must be
  there (at its default if the config does not choose)."""
  config = load_config(name, VARIANTS[name][0])
  missing = set(config_lib.method_defaults(config.method)) - set(config.keys())
  assert not missing, f'{name} lacks {sorted(missing)}: start it from config_lib.method_config.'

