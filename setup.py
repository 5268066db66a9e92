"""fsl_jax: few-shot learning in JAX/Flax (EGNN, ProtoNet and friends)."""

from setuptools import find_packages, setup

setup(
  name='fsl_jax',
  version='0.1.0',
  description='Few-shot learning in JAX and Flax: episodic training, EGNN and baselines.',
  long_description=open('README.md', encoding='utf-8').read(),
  long_description_content_type='text/markdown',
  packages=find_packages(include=['fsl_jax', 'fsl_jax.*']),
  package_data={'fsl_jax.data': ['splits/*.txt', 'splits/*.md']},
  python_requires='>=3.10',
  install_requires=[
    # CPU JAX by default; see README.md for GPU (jax[cuda12]) and TPU (jax[tpu]).
    'jax>=0.8',
    'flax>=0.12',
    'optax>=0.2.5',
    'chex>=0.1.90',
    'absl-py',
    'ml_collections',
    'orbax-checkpoint>=0.11',
    # TensorBoard's event-file format and protos only (fsl_jax/training/writers.py):
    # no TensorFlow.
    'tensorboard',
    'numpy',
    'pillow',
  ],
  extras_require={
    # Datasets prepared by TFDS (CIFAR-100 in a TFDS data dir), which it reads
    # with tf.data; the CPU build of TensorFlow is enough (JAX does the compute).
    'tfds': ['tensorflow-datasets', 'tensorflow-cpu'],
    # importlib_resources: TFDS needs it to prepare a dataset (tests/test_cifar.py).
    'test': ['fsl_jax[tfds]', 'pytest', 'pytest-xdist', 'nbclient', 'nbformat', 'ipykernel',
             'matplotlib', 'ruff', 'importlib_resources'],
    'colab': ['matplotlib'],
    # Reading the official PyTorch EGNN's checkpoints (experiments/convert_egnn_reference.py).
    'torch': ['torch'],
  },
)
