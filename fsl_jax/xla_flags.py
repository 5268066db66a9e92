"""The XLA flags fsl_jax runs with: decided here, applied when `fsl_jax` is imported.

XLA reads `XLA_FLAGS` once, when JAX first initialises a backend (the first
computation or device query, not `import jax`). `import fsl_jax` therefore adds
the defaults below to the environment, so that the binaries, a notebook, the
tests and the benchmark all run with them:

  * The user's own flags win: a flag already set in `XLA_FLAGS` is left as it is.
  * The defaults go *before* the user's flags. XLA stops parsing `XLA_FLAGS` at
    the first token that does not start with `--`, silently, and ignores the
    rest; such a token and everything after it is dropped with a warning that
    names it, so that it cannot hide flags added later.
  * `FSL_JAX_XLA_DEFAULTS=0` in the environment turns the defaults off.
  * If a JAX backend is already initialised when `fsl_jax` is imported, the
    flags can no longer take effect; a warning says so (import `fsl_jax` first,
    or set `XLA_FLAGS` before starting Python).

A method can ask for other CPU flags than the defaults (`XLA_CPU_FLAGS` of its
class, a value of None meaning XLA's own default): `apply(method=NAME)` before
the first computation puts them in force. The binaries do it for the method of
their config (`experiments/common.py`); a notebook calls
`fsl_jax.xla_flags.apply(method='maml')` right after `import fsl_jax`. The
exact flags fsl_jax added, rather than the user, are kept in
`FSL_JAX_XLA_ADDED`, so that a later `apply` (in this process or in a child
that inherits the environment) can replace them without taking a user's flag
for its own: they are fsl_jax's only while `XLA_FLAGS` still starts with them.
One case cannot be told apart: a child started with `XLA_FLAGS` set to exactly
what fsl_jax wrote, plus the inherited `FSL_JAX_XLA_ADDED`; a launcher that
means its value as the user's should drop `FSL_JAX_XLA_ADDED` from the child's
environment. A launcher that passes `XLA_FLAGS` on without it (an environment
allow-list) makes fsl_jax's flags the user's, so a method's own are not applied
(the flags in force are logged by the binaries).

The defaults only concern the CPU backend; GPU and TPU runs are unaffected.
Why each one (measured on the project's 2-core CPU, jaxlib 0.10.2; the figures
and commands are in experiments/README.md, Benchmark):

  * `--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK fusions).
    jaxlib 0.10.2 routes convolutions through YNNPACK fusions by default; on
    XLA's own path EGNN's convolutions run forward and backward in 1.03 s
    instead of 2.77 s (150 images of 84x84), and the 84x84 train step's peak
    memory halved. MAML, whose convolutions are matrix products of patches,
    is the exception: with XLA's default fusions its Omniglot train step takes
    0.17-0.21 s instead of 0.33-0.36 s (about 1.9x faster), while ProtoNet's
    takes 0.39 s instead of 0.19 s; `maml` asks for XLA's default.
"""

from __future__ import annotations

import os
import warnings

ENV_SWITCH = 'FSL_JAX_XLA_DEFAULTS'
ADDED = 'FSL_JAX_XLA_ADDED'  # The tokens fsl_jax put in XLA_FLAGS, space-separated.

# Flag name -> value. Values are strings, as they appear after `=`.
DEFAULTS: dict[str, str] = {
  '--xla_cpu_experimental_ynn_fusion_type': '',
}


def parse(flags: str) -> tuple[list[str], list[str]]:
  """Splits an `XLA_FLAGS` string into the tokens XLA parses and those it ignores.

  Returns:
    `(parsed, ignored)`: the tokens before the first one that does not start
    with `--`, and that token with everything after it.
  """
  tokens = flags.split()
  for i, token in enumerate(tokens):
    if not token.startswith('--'):
      return tokens[:i], tokens[i:]
  return tokens, []


def flag_name(token: str) -> str:
  return token.split('=', 1)[0]


def merged(user_flags: str, defaults: dict[str, str] = DEFAULTS) -> tuple[str, list[str]]:
  """The defaults the user did not set, then the user's parsed flags.

  Returns:
    `(flags, dropped)`: the new `XLA_FLAGS` value and the ignored tokens left out.
  """
  parsed, dropped = parse(user_flags)
  given = {flag_name(t) for t in parsed}
  ours = [f'{name}={value}' for name, value in defaults.items() if name not in given]
  return ' '.join(ours + parsed), dropped


def _backends_initialized() -> bool:
  try:
    from jax._src import xla_bridge
  except ImportError:  # JAX moved its internals; assume the flags still apply.
    return False
  check = getattr(xla_bridge, 'backends_are_initialized', None)
  return bool(check and check())


def method_flags(method: str | None) -> dict[str, str | None]:
  """The CPU flags method `method` asks for (its class's `XLA_CPU_FLAGS`); {} if
  `method` is None or unknown (the config's validation reports an unknown one)."""
  if not method or not isinstance(method, str):
    return {}
  from fsl_jax.models import base  # Imports JAX and Flax, but starts no backend.

  try:
    return dict(base.get_method(method).XLA_CPU_FLAGS)
  except ValueError:
    return {}


def _split_ours(environ) -> tuple[list[str], list[str], list[str]]:
  """`(ours, user, ignored)` tokens of `environ['XLA_FLAGS']`.

  fsl_jax writes its tokens first and names them in `environ[ADDED]`; they are
  taken for its own only while `XLA_FLAGS` still starts with them (the user may
  have appended flags since). A value that no longer does was rewritten by
  someone else, so all of it is the user's.
  """
  parsed, ignored = parse(environ.get('XLA_FLAGS', ''))
  added = environ.get(ADDED, '').split()
  if added and parsed[:len(added)] == added:
    return added, parsed[len(added):], ignored
  return [], parsed, ignored


def apply(environ=os.environ, method: str | None = None) -> str:
  """Puts the defaults, with `method`'s own flags, in `environ['XLA_FLAGS']`.

  Flags added by an earlier `apply` (see `_split_ours`) are replaced; the
  user's are kept and win. With `FSL_JAX_XLA_DEFAULTS=0`, flags fsl_jax added
  earlier are taken out and none are added. See the module docstring.

  Returns:
    The `XLA_FLAGS` value now in force.
  """
  current = environ.get('XLA_FLAGS', '')
  ours, user, dropped = _split_ours(environ)
  if environ.get(ENV_SWITCH, '1') == '0':
    if ours:  # Inherited from a process that had the defaults on.
      environ['XLA_FLAGS'] = ' '.join(user + dropped)
    environ.pop(ADDED, None)
    return environ.get('XLA_FLAGS', '')
  wanted = {**DEFAULTS, **method_flags(method)}
  wanted = {k: v for k, v in wanted.items() if v is not None}
  flags, _ = merged(' '.join(user), wanted)
  if dropped:
    warnings.warn(
      f'XLA_FLAGS holds {" ".join(dropped)!r}, which does not start with "--": XLA would '
      'silently ignore it and every flag after it. fsl_jax dropped it; write each flag as '
      '--name=value.', stacklevel=3)
  user_names = {flag_name(t) for t in user}
  environ[ADDED] = ' '.join(f'{k}={v}' for k, v in wanted.items() if k not in user_names)
  if flags != current:
    if _backends_initialized():
      warnings.warn(
        'A JAX backend was initialised before fsl_jax set its XLA flags, so they '
        f'({flags!r}) cannot take effect. Import fsl_jax (and call '
        'fsl_jax.xla_flags.apply(method=...)) before running JAX code, or set XLA_FLAGS '
        'before starting Python.', stacklevel=3)
    environ['XLA_FLAGS'] = flags
  return flags
