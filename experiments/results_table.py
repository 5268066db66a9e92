"""The results table: every method's measured numbers, from the recorded result files.

Each row below names a run (a folder of `experiments/results/`), how it was
trained, and the paper's numbers. A cell is filled from that folder's result
files (`results.json`, the test at the end of training, and the
`eval_*.json` of `experiments/evaluate.py`): the file whose episodes have the
column's way and shot, 15 queries per class (or the row's `query`), 1000
episodes, and the row's mode.
A cell with no such file reads "not measured". Nothing here holds a number.

    python experiments/results_table.py            # writes RESULTS.md
    python experiments/results_table.py --run      # trains and evaluates every row with
                                                   # no results yet, then writes RESULTS.md

`--run` trains a row in `runs/<run>` with its command, evaluates each column,
and copies the result files into `experiments/results/<run>/`.
"""

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_bool('run', False, 'Train and evaluate the rows that have no results, first.')
flags.DEFINE_string('output', 'RESULTS.md', 'Where to write the table (relative to the repo).')
flags.DEFINE_string('data_dir', '../shared/data', 'Data root for --run.')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'experiments', 'results')
QUERY, EPISODES = 15, 1000


@dataclasses.dataclass(frozen=True)
class Row:
  """One trained model and the columns it is tested on.

  Attributes:
    method: the method's name in the table.
    run: its folder under `experiments/results/` (and `runs/` for `--run`).
    config: `<config file stem>:<variant>` it was trained with.
    flags: extra `--config.FIELD=VALUE` flags of its training command.
    schedule: the training schedule in words, next to the paper's.
    paper: the paper's number per column (`None`: not reported).
    mode: extra fields a result must have, e.g. EGNN's `transductive`.
    columns: the columns this row is evaluated on (`--run`).
    eval_flags: extra flags of its evaluations, e.g. `--transductive`.
    query: queries per class of its test episodes: 15, the shared protocol, unless
      a row reproduces a paper's own (e.g. MAML's official test, 1 per class).
  """

  method: str
  run: str
  config: str
  schedule: str
  paper: dict
  dataset: str = 'omniglot'
  flags: tuple[str, ...] = ()
  mode: tuple[tuple[str, object], ...] = ()
  columns: tuple[tuple[int, int], ...] = ((5, 1), (5, 5), (20, 1), (20, 5))
  eval_flags: tuple[str, ...] = ()
  query: int = QUERY


OMNIGLOT = ((5, 1), (5, 5), (20, 1), (20, 5))
# The full-schedule MAML run: which checkpoint its cells test.
MAML_60K = ('the paper\'s 60k meta-updates, meta-batch 32, 5-way 1-shot, 1 inner step (3 at test); '
            'the cells test the best validation checkpoint, step 56000 (validation 97.62%)')
MINI = ((5, 1), (5, 5))

ROWS = (
  Row('ProtoNet (bfloat16)', 'protonet_omniglot_1shot_bf16', 'protonet_omniglot:1shot',
      '6000 episodes of 60-way 1-shot (paper: until validation stops improving)',
      {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9},
      flags=('--config.compute_dtype=bfloat16',), columns=((5, 1), (20, 1))),
  Row('ProtoNet, train+val classes', 'protonet_omniglot_1shot_trainval',
      'protonet_omniglot:1shot-trainval',
      '6000 episodes of 60-way 1-shot on the 1200 train+val characters, as the paper, '
      'no validation (paper: until validation stops improving)',
      {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9}),
  Row('ProtoNet', 'protonet_mini_imagenet_5shot_1000steps', 'protonet_mini_imagenet:5shot',
      '1000 episodes of 20-way 5-shot (5% of the 20k default)',
      {(5, 1): 49.42, (5, 5): 68.20}, dataset='mini_imagenet',
      flags=('--config.num_train_steps=1000', '--config.eval_every=500'), columns=((5, 5),)),
  Row('ProtoNet', 'protonet_mini_imagenet_1shot_500steps', 'protonet_mini_imagenet:1shot',
      '500 episodes of 30-way 1-shot (2.5% of the 20k default)',
      {(5, 1): 49.42, (5, 5): 68.20}, dataset='mini_imagenet',
      flags=('--config.num_train_steps=500', '--config.eval_every=500'), columns=((5, 1),)),
  Row('EGNN, transductive', 'egnn_mini_imagenet_5way5shot_50steps',
      'egnn_mini_imagenet:5way5shot',
      '50 of the reference\'s 100k steps, meta-batch 40, 5-way 5-shot (a pipeline check, '
      'not a result)',
      {(5, 5): 76.37}, dataset='mini_imagenet',
      flags=('--config.num_train_steps=50', '--config.eval_every=50',
             '--config.checkpoint_every=25'),
      mode=(('transductive', True),), columns=((5, 5),)),
  Row('EGNN, non-transductive', 'egnn_mini_imagenet_5way5shot_nontransductive_50steps',
      'egnn_mini_imagenet:5way5shot-nontransductive',
      '50 of the reference\'s 100k steps, meta-batch 40, 5-way 5-shot (a pipeline check, '
      'not a result)',
      {(5, 5): 66.85}, dataset='mini_imagenet',
      flags=('--config.num_train_steps=50', '--config.eval_every=50',
             '--config.checkpoint_every=25'),
      mode=(('transductive', False),), columns=((5, 5),)),
  Row('EGNN, transductive', 'egnn_omniglot_5way1shot', 'egnn_omniglot:5way1shot',
      '4500 of the reference\'s 100k steps, meta-batch 40, 5-way 1-shot',
      {(5, 1): None, (5, 5): None, (20, 1): None, (20, 5): None},
      flags=('--config.num_train_steps=4500', '--config.eval_every=500'),
      mode=(('transductive', True),), columns=((5, 1), (5, 5), (20, 1))),
  Row('EGNN, non-transductive', 'egnn_omniglot_5way1shot_nontransductive',
      'egnn_omniglot:5way1shot-nontransductive',
      '3000 of the reference\'s 100k steps, meta-batch 40, 5-way 1-shot',
      {(5, 1): None, (5, 5): None, (20, 1): None, (20, 5): None},
      flags=('--config.num_train_steps=3000', '--config.eval_every=500'),
      mode=(('transductive', False),), columns=((5, 1), (5, 5), (20, 1))),
  Row('EGNN, transductive, learning rate halved every 1000 steps',
      'egnn_omniglot_5way1shot_3k_decay', 'egnn_omniglot:5way1shot',
      '3000 of the reference\'s 100k steps, meta-batch 40, 5-way 1-shot, the learning rate '
      'halved every 1000 steps (the reference: every 15k)',
      {(5, 1): None, (5, 5): None, (20, 1): None, (20, 5): None},
      flags=('--config.num_train_steps=3000', '--config.lr_decay_every=1000',
             '--config.eval_every=500'),
      mode=(('transductive', True),)),
  Row('EGNN, transductive, trained at 20-way 1-shot', 'egnn_omniglot_20way1shot_1500_decay',
      'egnn_omniglot:20way1shot',
      '1500 of the reference\'s 100k steps, meta-batch 20, 20-way 1-shot, the learning rate '
      'halved every 500 steps, no validation (the last checkpoint is tested)',
      {(5, 1): None, (5, 5): None, (20, 1): None, (20, 5): None},
      flags=('--config.num_train_steps=1500', '--config.lr_decay_every=500',
             '--config.eval_every=0', '--config.checkpoint_every=250'),
      mode=(('transductive', True),), columns=((5, 1), (5, 5), (20, 1))),
  Row('EGNN, transductive, trained at 5-way 5-shot', 'egnn_omniglot_5way5shot_decay',
      'egnn_omniglot:5way5shot',
      '1000 of the reference\'s 100k steps, meta-batch 40, 5-way 5-shot, the learning rate '
      'halved at step 500, no validation (the last checkpoint is tested); trained on graphs '
      'of 1 query per class, it gives 98.40 ± 0.36 tested so (experiments/README.md)',
      {(5, 1): None, (5, 5): None, (20, 1): None, (20, 5): None},
      flags=('--config.num_train_steps=1000', '--config.lr_decay_every=500',
             '--config.eval_every=0', '--config.checkpoint_every=100'),
      mode=(('transductive', True),), columns=((5, 5),)),
  Row('EGNN, transductive, fsl_jax\'s training', 'egnn_omniglot_5way1shot_2k',
      'egnn_omniglot:5way1shot', '2000 of the reference\'s 100k steps, meta-batch 40 '
      '(rerun on a later machine, its command gives other numbers: README.md, Results)',
      {(5, 1): None}, flags=('--config.num_train_steps=2000', '--config.eval_every=500'),
      mode=(('transductive', True),), columns=((5, 1),)),
  Row('EGNN, transductive, the reference\'s training', 'egnn_omniglot_5way1shot_reference_2k',
      'egnn_omniglot:5way1shot-reference', '2000 of the reference\'s 100k steps, meta-batch 40',
      {(5, 1): None}, flags=('--config.num_train_steps=2000', '--config.eval_every=500'),
      mode=(('transductive', True),), columns=((5, 1),)),
  Row('Siamese', 'siamese_omniglot_1shot', 'siamese_omniglot:1shot',
      'the config\'s 6000 episodes of 20-way 1-shot pairs (the paper: SGD on distorted '
      'verification pairs)',
      {(5, 1): 97.3, (5, 5): 98.4, (20, 1): 88.2, (20, 5): 97.0}),
  Row('Siamese, half the schedule', 'siamese_omniglot_1shot_3k', 'siamese_omniglot:1shot',
      '3000 episodes of 20-way 1-shot pairs (half the config\'s 6000; the paper: SGD on '
      'distorted verification pairs)',
      {(5, 1): 97.3, (5, 5): 98.4, (20, 1): 88.2, (20, 5): 97.0},
      flags=('--config.num_train_steps=3000',), columns=((5, 1), (20, 1))),
  Row('Matching Networks', 'matchingnet_omniglot_5way1shot_unnormalized',
      'matchingnet_omniglot:5way1shot',
      'the config\'s 10k episodes of 5-way 1-shot; attention on support-normalised dot '
      'products (the query\'s norm a learned temperature)',
      {(5, 1): 98.1, (5, 5): 98.9, (20, 1): 93.8, (20, 5): 98.5},
      mode=(('matchingnet_normalize_query', False),)),
  Row('Matching Networks, cosine (query normalised too)', 'matchingnet_omniglot_5way1shot_5k',
      'matchingnet_omniglot:5way1shot',
      '5000 episodes of 5-way 1-shot (half the config\'s 10k; the paper gives no schedule)',
      {(5, 1): 98.1, (5, 5): 98.9, (20, 1): 93.8, (20, 5): 98.5},
      flags=('--config.num_train_steps=5000', '--config.matchingnet_normalize_query=True'),
      mode=(('matchingnet_normalize_query', True),)),
  Row('Relation Networks', 'relationnet_omniglot_5way1shot_5k', 'relationnet_omniglot:5way1shot',
      '5000 episodes of 5-way 1-shot (0.5% of the paper\'s 1M)',
      {(5, 1): 99.6, (5, 5): 99.8, (20, 1): 97.6, (20, 5): 99.1},
      flags=('--config.num_train_steps=5000', '--config.eval_every=1000'),
      columns=((5, 1), (20, 1))),
  Row('Relation Networks', 'relationnet_omniglot_5way1shot_12k',
      'relationnet_omniglot:5way1shot',
      '12k episodes of 5-way 1-shot (1.2% of the paper\'s 1M); the 5-shot columns test this '
      '1-shot model, its relation module fed the sum of 5 support maps (Sec. 3.3), a scale it '
      'never saw in training',
      {(5, 1): 99.6, (5, 5): 99.8, (20, 1): 97.6, (20, 5): 99.1},
      flags=('--config.num_train_steps=12000', '--config.eval_every=2000')),
  Row('Relation Networks, trained at 5-shot', 'relationnet_omniglot_5way5shot_6k',
      'relationnet_omniglot:5way5shot', '6000 episodes of 5-way 5-shot (0.6% of the paper\'s 1M)',
      {(5, 5): 99.8, (20, 5): 99.1},
      flags=('--config.num_train_steps=6000', '--config.eval_every=2000'),
      columns=((5, 5), (20, 5))),
  Row('GNN (Garcia & Bruna), non-transductive', 'gnn_omniglot_5way1shot', 'gnn_omniglot:5way1shot',
      'the config\'s 100k episodes of 5-way 1-shot, one query per graph',
      {(5, 1): 99.2, (5, 5): 99.7, (20, 1): 97.4, (20, 5): 99.0},
      mode=(('transductive', False),), columns=((5, 1), (20, 1))),
  Row('GNN (Garcia & Bruna), non-transductive', 'gnn_omniglot_5way1shot_2k',
      'gnn_omniglot:5way1shot',
      '2000 of the config\'s 100k episodes of 5-way 1-shot, one query per graph',
      {(5, 1): 99.2, (5, 5): 99.7, (20, 1): 97.4, (20, 5): 99.0},
      flags=('--config.num_train_steps=2000', '--config.eval_every=500'),
      mode=(('transductive', False),), columns=((5, 1), (5, 5))),
  Row('GNN (Garcia & Bruna), non-transductive, learning rate halved every 1000 steps',
      'gnn_omniglot_5way1shot_3k_decay', 'gnn_omniglot:5way1shot',
      '3000 of the config\'s 100k episodes of 5-way 1-shot, one query per graph, the learning '
      'rate halved every 1000 steps (the config: every 10k): the schedule of the EGNN row '
      '"learning rate halved every 1000 steps"',
      {(5, 1): 99.2, (5, 5): 99.7, (20, 1): 97.4, (20, 5): 99.0},
      flags=('--config.num_train_steps=3000', '--config.lr_decay_every=1000',
             '--config.eval_every=500'),
      mode=(('transductive', False),), columns=((5, 1), (5, 5))),
  Row('GNN (Garcia & Bruna), non-transductive, trained at 20-way 1-shot',
      'gnn_omniglot_20way1shot_1500_decay', 'gnn_omniglot:20way1shot',
      '1500 of the config\'s 80k episodes of 20-way 1-shot, meta-batch 5, the learning rate '
      'halved every 500 steps, no validation (the last checkpoint is tested): the schedule '
      'of the 20-way EGNN row; its label features have `way` units, so it has no 5-way test',
      {(20, 1): 97.4},
      flags=('--config.num_train_steps=1500', '--config.lr_decay_every=500',
             '--config.eval_every=0', '--config.checkpoint_every=250'),
      mode=(('transductive', False),), columns=((20, 1),)),
  Row('TPN', 'tpn_omniglot_5way1shot', 'tpn_omniglot:5way1shot',
      'the config\'s 40k episodes of 5-way 1-shot (the paper has no Omniglot table)',
      {(5, 1): None, (5, 5): None, (20, 1): None, (20, 5): None}),
  Row('MAML, second order, transductive BatchNorm, the full schedule',
      'maml_omniglot_5way1shot_60k', 'maml_omniglot:5way1shot', MAML_60K,
      {(5, 1): 98.7, (5, 5): 99.9, (20, 1): 95.8, (20, 5): 98.9},
      flags=('--config.checkpoint_every=250',),
      mode=(('transductive', True), ('first_order', False)), columns=((5, 1),)),
  Row('MAML, as the row above, tested as the official code tests: 1 query per class',
      'maml_omniglot_5way1shot_60k', 'maml_omniglot:5way1shot',
      MAML_60K + '; each episode\'s 5 queries normalised together, as in training, '
      'where 15 per class dilute what the query batch\'s statistics tell',
      {(5, 1): 98.7, (5, 5): 99.9, (20, 1): 95.8, (20, 5): 98.9},
      flags=('--config.checkpoint_every=250',),
      mode=(('transductive', True), ('first_order', False)), columns=((5, 1),), query=1),
  Row('MAML, the full-schedule model tested with non-transductive BatchNorm',
      'maml_omniglot_5way1shot_60k', 'maml_omniglot:5way1shot',
      'as the first full-schedule row; queries normalised by the supports\' statistics at '
      'test, so no query affects another', {(5, 1): None},
      flags=('--config.checkpoint_every=250',),
      mode=(('transductive', False), ('first_order', False)), columns=((5, 1),),
      eval_flags=('--notransductive',)),
  Row('MAML, second order, transductive BatchNorm, trained at 20-way 1-shot',
      'maml_omniglot_20way1shot_5k', 'maml_omniglot:20way1shot',
      'a short schedule, 4000 of the paper\'s 60k meta-updates (a 5000-step run stopped at '
      'step 4045 for time; the learning rate is constant, so 4000 steps train the same '
      'model): meta-batch 16, 20-way 1-shot, 5 inner steps (5 at test); the cells test the '
      'best validation checkpoint, step 4000 (validation 68.28%, still rising); a 20-way '
      'head has no 5-way test',
      {(20, 1): 95.8, (20, 5): 98.9},
      flags=('--config.num_train_steps=4000', '--config.eval_every=1000',
             '--config.checkpoint_every=250'),
      mode=(('transductive', True), ('first_order', False)), columns=((20, 1),)),
  Row('MAML, second order, transductive BatchNorm', 'maml_omniglot_5way1shot_3k',
      'maml_omniglot:5way1shot', '3000 of the paper\'s 60k meta-updates, meta-batch 32, '
      '5-way 1-shot, 1 inner step (3 at test)',
      {(5, 1): 98.7, (5, 5): 99.9, (20, 1): 95.8, (20, 5): 98.9},
      flags=('--config.num_train_steps=3000', '--config.eval_every=1000'),
      mode=(('transductive', True), ('first_order', False)), columns=((5, 1),)),
  Row('MAML, second order, the same model tested with non-transductive BatchNorm',
      'maml_omniglot_5way1shot_3k', 'maml_omniglot:5way1shot',
      'as the row above; queries normalised by the supports\' statistics at test',
      {(5, 1): None}, flags=('--config.num_train_steps=3000', '--config.eval_every=1000'),
      mode=(('transductive', False), ('first_order', False)), columns=((5, 1),),
      eval_flags=('--notransductive',)),
  Row('MAML, first order, transductive BatchNorm', 'maml_omniglot_5way1shot_firstorder_1500',
      'maml_omniglot:5way1shot-firstorder', '1500 of the paper\'s 60k meta-updates, '
      'meta-batch 32, 5-way 1-shot, 1 inner step (3 at test); the MAML paper reports first '
      'order on miniImageNet only: the numbers in parentheses are first-order MAML\'s in '
      'Nichol et al. 2018 (Reptile), Table 1',
      {(5, 1): 98.3, (5, 5): 99.2, (20, 1): 89.4, (20, 5): 97.9},
      flags=('--config.num_train_steps=1500', '--config.eval_every=500'),
      mode=(('transductive', True), ('first_order', True)), columns=((5, 1),)),
  Row('Relation Networks', 'relationnet_mini_imagenet_5shot', 'relationnet_mini_imagenet:5shot',
      'the config\'s 100k episodes (20% of the paper\'s 500k)',
      {(5, 1): 50.44, (5, 5): 65.32}, dataset='mini_imagenet', columns=((5, 5),)),
  Row('Matching Networks (FCE)', 'matchingnet_mini_imagenet_5shot',
      'matchingnet_mini_imagenet:5shot', 'the config\'s 20k episodes',
      {(5, 1): 43.56, (5, 5): 55.31}, dataset='mini_imagenet', columns=((5, 5),)),
  *(Row(f'MAML, {order}, transductive BatchNorm', f'maml_mini_imagenet_5way{shot}shot{run}',
        f'maml_mini_imagenet:5way{shot}shot{variant}',
        f'the config\'s 60k meta-updates (the paper\'s), meta-batch {4 if shot == 1 else 2}, '
        '5 inner steps (10 at test)', {(5, shot): paper}, dataset='mini_imagenet',
        mode=(('transductive', True), ('first_order', bool(variant))), columns=((5, shot),))
    for order, variant, run, papers in (('second order', '', '', (48.70, 63.11)),
                                        ('first order', '-firstorder', '_firstorder',
                                         (48.07, 63.15)))
    for shot, paper in zip((1, 5), papers, strict=True)),
)


def _matches(result: dict, way: int, shot: int, mode, query: int) -> bool:
  method_config = result.get('method_config', {})
  return (result.get('way') == way and result.get('shot') == shot
          and result.get('query') == query and result.get('test_episodes') == EPISODES
          and all(method_config.get(k) == v for k, v in mode))


def find_result(run: str, way: int, shot: int, mode=(),
                query: int = QUERY) -> tuple[dict, str] | None:
  """The result of `run` at (way, shot), `query` queries per class, 1000 episodes, in
  `mode`."""
  files = sorted(glob.glob(os.path.join(RESULTS, run, '*.json')))
  for path in files:
    if os.path.basename(path) == 'config.json':
      continue
    with open(path) as f:
      result = json.load(f)
    if _matches(result, way, shot, mode, query):
      return result, os.path.relpath(path, REPO)
  return None


def _cell(row: Row, column) -> str:
  paper = row.paper.get(column)
  paper = f' ({paper})' if paper is not None else ''
  found = find_result(row.run, *column, row.mode, row.query)
  if found is None:
    return f'not measured{paper}' if column in row.paper else '-'
  result, _ = found
  return f'**{100 * result["test_accuracy"]:.2f} ± {100 * result["test_ci95"]:.2f}**{paper}'


def train_command(row: Row) -> str:
  name, variant = row.config.split(':')
  return (f'python experiments/train.py --config=experiments/configs/{name}.py:{variant} '
          f'--workdir=runs/{row.run} {" ".join(row.flags)}').strip()


def eval_command(row: Row, way: int, shot: int) -> str:
  return (f'python experiments/evaluate.py --workdir=runs/{row.run} --way={way} --shot={shot} '
          f'--query={row.query} --episodes={EPISODES} {" ".join(row.eval_flags)}').strip()


def render() -> str:
  lines = [
    '# Results',
    '',
    'Generated by `python experiments/results_table.py` from the result files in',
    '`experiments/results/<run>/`; `python experiments/results_table.py --run`',
    'trains and evaluates every row that has none. Each cell: mean accuracy (%) and',
    'its 95% confidence interval over the same 1000 fixed test episodes',
    '(`eval_seed=0`, 15 queries per class unless the row says otherwise), with the',
    'paper\'s number in parentheses. Every schedule is stated; most are a fraction of the',
    'paper\'s. EGNN\'s paper has no Omniglot table. More runs, settings and their',
    'discussion: README.md, Results.',
    '',
  ]
  for dataset, columns, title in (('omniglot', OMNIGLOT, 'Omniglot (Vinyals split, 28x28)'),
                                  ('mini_imagenet', MINI, 'miniImageNet (Ravi split)')):
    heads = [f'{w}-way {s}-shot' for w, s in columns]
    lines += [f'## {title}', '', '| method | ' + ' | '.join(heads) + ' | trained as |',
              '| --- |' + ' --- |' * (len(columns) + 1)]
    for row in ROWS:
      if row.dataset == dataset:
        cells = ' | '.join(_cell(row, c) for c in columns)
        lines.append(f'| {row.method} | {cells} | {row.schedule}; `{row.run}` |')
    lines.append('')
  lines += ['## Commands', '',
            'Each row is trained, then evaluated per column, with these commands (what',
            '`--run` runs for a row with results missing):', '']
  for row in ROWS:
    lines += [f'- {row.method} (`{row.run}`):', '', '  ```bash', f'  {train_command(row)}']
    lines += [f'  {eval_command(row, *c)}' for c in row.columns]
    lines += ['  ```', '']
  return '\n'.join(lines)


def run_missing(data_dir: str) -> None:
  """Trains and evaluates every row without all its results; copies them in."""
  python = sys.executable
  for row in ROWS:
    missing = [c for c in row.columns
               if find_result(row.run, *c, row.mode, row.query) is None]
    if not missing:
      continue
    env = dict(os.environ, FSL_JAX_DATA_DIR=data_dir)
    workdir = os.path.join(REPO, 'runs', row.run)
    if not os.path.isfile(os.path.join(workdir, 'results.json')):
      subprocess.run([python, *train_command(row).split()[1:]], cwd=REPO, env=env, check=True)
    for column in missing:
      subprocess.run([python, *eval_command(row, *column).split()[1:]], cwd=REPO, env=env,
                     check=True)
    target = os.path.join(RESULTS, row.run)
    os.makedirs(target, exist_ok=True)
    evals = glob.glob(os.path.join(workdir, 'eval_*.json'))
    for path in [os.path.join(workdir, n) for n in ('config.json', 'results.json')] + evals:
      if os.path.isfile(path):
        shutil.copy(path, target)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  if FLAGS.run:
    run_missing(FLAGS.data_dir)
  with open(os.path.join(REPO, FLAGS.output), 'w') as f:
    f.write(render())
  print(f'Wrote {FLAGS.output}.')


if __name__ == '__main__':
  app.run(main)
