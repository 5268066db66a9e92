"""Running a command and measuring it; imports no JAX (the comparison drivers use it)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_measured(command: list[str], env=None) -> tuple[str, float]:
  """Runs a command; returns its stdout and the peak RSS (GiB) of exactly that process."""
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env=env, cwd=REPO)
  stdout = process.stdout.read()
  _, status, usage = os.wait4(process.pid, 0)
  code = os.waitstatus_to_exitcode(status)
  process.returncode = code
  if code:
    sys.exit(f'{" ".join(command[:4])} ... failed with exit status {code}; run it by hand to '
             'see why.')
  return stdout, usage.ru_maxrss / 2**20  # KiB -> GiB.
