"""The Colab notebooks run top to bottom (tiny settings) in a fresh Jupyter kernel."""

import pathlib
import re

import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
COLABS = REPO / 'colabs'
ACCURACY = re.compile(r'\d+\.\d+ \+- \d+\.\d+%')


def _output_text(nb) -> str:
  """Stream and plain-text outputs of every code cell, concatenated."""
  parts = []
  for cell in nb.cells:
    for output in cell.get('outputs', []):
      if output.output_type == 'stream':
        parts.append(output.text)
      elif 'data' in output:
        parts.append(output.data.get('text/plain', ''))
  return '\n'.join(parts)


def _execute(path):
  """Runs a notebook in a fresh kernel; fails the test on any cell error."""
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(COLABS)}}
  )
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f'{path.name} failed:\n{e}')
  errors = [o for c in nb.cells for o in c.get('outputs', []) if o.output_type == 'error']
  assert not errors, errors
  return nb


@pytest.mark.slow
def test_quickstart_runs(monkeypatch, tmp_path, data_dir):
  # The kernel inherits this process's environment (XLA_FLAGS from conftest
  # included: 4 CPU devices, which the notebook's meta-batch must divide over).
  monkeypatch.setenv('FSL_JAX_NOTEBOOK_TINY', '1')
  monkeypatch.setenv('FSL_JAX_REPO', str(REPO))
  monkeypatch.setenv('FSL_JAX_DATA_DIR', data_dir)
  monkeypatch.setenv('TMPDIR', str(tmp_path))  # The notebook's WORKDIR goes under it.
  nb = _execute(COLABS / 'quickstart.ipynb')
  text = _output_text(nb)
  assert 'Installing fsl_jax' not in text, 'The notebook pip-installed an importable fsl_jax.'
  accuracies = ACCURACY.findall(text)
  # The 5-way test accuracy after training and the 20-way re-evaluation.
  assert len(accuracies) >= 2, text


@pytest.mark.slow
def test_egnn_notebook_runs(monkeypatch, tmp_path, data_dir):
  monkeypatch.setenv('FSL_JAX_NOTEBOOK_TINY', '1')
  monkeypatch.setenv('FSL_JAX_REPO', str(REPO))
  monkeypatch.setenv('FSL_JAX_DATA_DIR', data_dir)
  monkeypatch.setenv('TMPDIR', str(tmp_path))
  nb = _execute(COLABS / 'egnn.ipynb')
  text = _output_text(nb)
  assert len(ACCURACY.findall(text)) >= 1, text
  assert 'episode accuracy:' in text
  images = [o for c in nb.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
  assert len(images) == 2, 'Expected the episode figure and the edge heatmaps.'


@pytest.mark.slow
def test_mini_imagenet_episode_notebook_runs(monkeypatch, tmp_path, data_dir):
  monkeypatch.setenv('FSL_JAX_REPO', str(REPO))
  monkeypatch.setenv('FSL_JAX_DATA_DIR', data_dir)
  nb = _execute(COLABS / 'mini_imagenet_episode.ipynb')
  text = _output_text(nb)
  assert '20 classes x 600 images of (84, 84, 3)' in text, text
  images = [o for c in nb.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
  assert len(images) == 1, 'Expected the episode figure.'
