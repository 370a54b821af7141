"""SIGTERM (a preemption notice) stops training with a checkpoint of the
step reached; running again resumes from exactly there."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

_RUN = """
import json, sys
sys.path.insert(0, {tests!r})
from absl import logging
logging.set_verbosity(logging.INFO)
from etcjax.training import train
from training import tiny_runs
config = tiny_runs.tiny_config({folder!r})
config.total_steps = 400
config.checkpoint_every_steps = 1000
config.log_every_steps = 1
print(json.dumps(train.train_and_evaluate(config, {workdir!r})), flush=True)
"""


@pytest.mark.slow  # ~50 s: two training processes.
def test_sigterm_saves_and_resumes(tmp_path):
  from training import tiny_runs  # pylint: disable=g-import-not-at-top
  folder = tiny_runs.make_image_folder(str(tmp_path / "data"), per_class=8)
  workdir = str(tmp_path / "work")
  script = _RUN.format(tests=os.path.dirname(HERE), folder=folder,
                       workdir=workdir)
  proc = subprocess.Popen([sys.executable, "-c", script],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  # Wait for training to be under way (a log line of step >= 3).
  deadline = time.time() + 240
  lines = []
  while time.time() < deadline:
    line = proc.stderr.readline()
    if not line:
      break
    lines.append(line)
    if "step 3/400" in line:
      break
  assert proc.poll() is None, "".join(lines[-50:])
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err[-3000:]
  assert out.strip().splitlines()[-1] == "null"  # Stopped early.
  assert "(preemption) after saving a checkpoint" in err
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")))
  stopped = steps[-1]
  assert 3 <= stopped < 400  # Not an interval step (every 1000).
  assert not os.path.exists(os.path.join(workdir, "results.json"))

  proc = subprocess.run([sys.executable, "-c", script.replace(
      "config.total_steps = 400", f"config.total_steps = {stopped + 2}")],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  assert results["resumed_from_step"] == stopped
