"""Data parallelism: 8 simulated devices and 2 processes match 1 device.

Each run is a fresh interpreter (tests/training/distributed_run.py): the
device count and jax.distributed must be set before jax starts.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "distributed_run.py")


def _start(out, *args):
  return subprocess.Popen(
      [sys.executable, SCRIPT, f"--out={out}", *args],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, out):
  log, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, log[-3000:]
  with open(out) as f:
    return json.load(f)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _assert_same_training(a, b):
  np.testing.assert_allclose(a["losses"], b["losses"], rtol=2e-5)
  flat_a = np.concatenate([np.ravel(x) for x in _leaves(a["variables"])])
  flat_b = np.concatenate([np.ravel(x) for x in _leaves(b["variables"])])
  np.testing.assert_allclose(flat_a, flat_b, rtol=1e-4, atol=1e-5)


def _leaves(tree):
  if hasattr(tree, "keys"):
    for k in sorted(tree):
      yield from _leaves(tree[k])
  else:
    yield np.asarray(tree, np.float64)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("one") / "result.json")
  return _finish(_start(out, "--devices=1"), out)


def test_eight_devices_match_one_device(tmp_path, one_device):
  out = str(tmp_path / "eight.json")
  eight = _finish(_start(out, "--devices=8"), out)
  assert eight["devices"] == 8 and one_device["devices"] == 1
  assert eight["batch_sharding"] == "P('data',)"
  _assert_same_training(eight, one_device)
  # The runs trained (so the comparison is not between two no-ops).
  assert eight["losses"][-1] < eight["losses"][0]


@pytest.mark.multiprocess
def test_two_processes_end_with_identical_parameters(tmp_path, one_device):
  port = _free_port()
  outs = [str(tmp_path / f"p{i}.json") for i in range(2)]
  procs = [_start(outs[i], "--devices=2", "--num_processes=2",
                  f"--process_id={i}", f"--port={port}") for i in range(2)]
  results = [_finish(p, o) for p, o in zip(procs, outs)]
  assert [r["processes"] for r in results] == [2, 2]
  assert [r["devices"] for r in results] == [4, 4]
  # Bit-identical across processes (replicated state), and the same
  # training as one device fed the whole batch.
  assert results[0]["variables"] == results[1]["variables"]
  assert results[0]["losses"] == results[1]["losses"]
  _assert_same_training(results[0], one_device)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _main(workdir, tfds_data_dir, devices, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen(
      [sys.executable, "-m", "etcjax.main",
       "--config=configs/convmixer_cifar10_etc.py:smoke",
       f"--workdir={workdir}", f"--config.data_dir={tfds_data_dir}",
       "--config.total_steps=8", "--config.checkpoint_every_steps=4", *flags],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_main_on_two_processes_matches_one_process(tfds_data_dir, tmp_path):
  """`python -m etcjax.main` on 2 processes x 2 devices (pipeline sharded by
  host, orbax checkpoints and export written by both) trains the same model
  as 1 process x 4 devices."""
  from etcjax import encryption  # pylint: disable=g-import-not-at-top
  from etcjax.training import export  # pylint: disable=g-import-not-at-top
  key = str(tmp_path / "owner.key")
  encryption.save_key(key, encryption.generate_key())
  port = _free_port()
  procs = [_main(tmp_path / "two", tfds_data_dir, 2,
                 f"--config.encryption.key_file={key}",
                 f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}") for i in range(2)]
  single = _main(tmp_path / "one", tfds_data_dir, 4,
                 f"--config.encryption.key_file={key}")
  for proc in procs + [single]:
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
  with open(tmp_path / "two" / "results.json") as f:
    results = json.load(f)
  assert (results["processes"], results["devices"]) == (2, 4)
  _, two, _ = export.load(str(tmp_path / "two" / "export"))
  _, one, _ = export.load(str(tmp_path / "one" / "export"))
  for a, b in zip(_leaves(two), _leaves(one)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
