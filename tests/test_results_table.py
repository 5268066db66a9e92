"""The results table reads its numbers from result files, and every row's config loads."""

import json
import os
import sys

import pytest
from helpers import load_config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import results_table  # noqa: E402


def _write(folder, name, **fields):
  result = {'way': 5, 'shot': 1, 'query': 15, 'test_episodes': 1000, 'test_accuracy': 0.9,
            'test_ci95': 0.01, 'method_config': {}}
  result.update(fields)
  with open(folder / name, 'w') as f:
    json.dump(result, f)


def test_cells_come_from_the_matching_file(tmp_path, monkeypatch):
  monkeypatch.setattr(results_table, 'RESULTS', str(tmp_path))
  run = tmp_path / 'run'
  run.mkdir()
  _write(run, 'eval_a.json', test_accuracy=0.5, method_config={'transductive': False})
  _write(run, 'eval_b.json', test_accuracy=0.8, method_config={'transductive': True})
  _write(run, 'eval_c.json', way=20, test_accuracy=0.7, query=1)  # 1 query: not a cell.
  row = results_table.Row('m', 'run', 'protonet_omniglot:1shot', 's', {(5, 1): 1.0, (20, 1): 2.0},
                          mode=(('transductive', True),))
  assert results_table._cell(row, (5, 1)) == '**80.00 ± 1.00** (1.0)'
  assert results_table._cell(row, (20, 1)) == 'not measured (2.0)'
  assert results_table._cell(row, (5, 5)) == '-'
  # A row that reproduces a paper's own test with 1 query per class reads that file only.
  one_query = results_table.Row('m', 'run', 'maml_omniglot:5way1shot', 's',
                                {(5, 1): 1.0, (20, 1): 2.0}, query=1)
  assert results_table._cell(one_query, (20, 1)) == '**70.00 ± 1.00** (2.0)'
  assert results_table._cell(one_query, (5, 1)) == 'not measured (1.0)'
  assert '--query=1 ' in results_table.eval_command(one_query, 20, 1) + ' '


@pytest.mark.parametrize('row', results_table.ROWS, ids=lambda r: r.run)
def test_every_row_names_a_config_that_loads(row):
  name, variant = row.config.split(':')
  config = load_config(name, variant)
  assert config.dataset == row.dataset
