# Sourced by the reproduce scripts: from the repository root, set up .venv (once)
# and point FSL_JAX_DATA_DIR at the data (default: ../shared/data).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import fsl_jax' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e .
fi
export FSL_JAX_DATA_DIR="${FSL_JAX_DATA_DIR:-$(cd .. && pwd)/shared/data}"
