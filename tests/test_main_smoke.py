"""CI smoke test of the whole job on real CIFAR-10, through the CLIs:

encrypt (data owner) -> train on the encrypted dataset (cloud, no key) ->
checkpoint -> SIGKILL -> resume -> export -> predict (with the key, and on
already-encrypted files), and a wrong key refused.

Only the training runs are subprocesses (one has to be killed); the other
CLIs run in-process through their `main(argv)`, because on a loaded 2-core
machine every extra interpreter spends 5-30 s importing jax and tensorflow.
"""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from etcjax import encrypt as encrypt_cli
from etcjax import host_memory
from etcjax import predict as predict_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 256  # images per split


def _run(args, **kwargs):
  return subprocess.run([sys.executable, "-m", *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=300, **kwargs)


def _cli(main, argv):
  """Runs a CLI's `main(argv)` in-process; returns (status, stdout, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = main(argv)
  return status, out.getvalue(), err.getvalue()


def _main_args(data, workdir):
  return ["etcjax.main", "--config=configs/convmixer_cifar10_etc.py:smoke",
          f"--workdir={workdir}", "--config.dataset=encrypted",
          f"--config.data_dir={data}", "--config.train_split=train",
          "--config.eval_split=test", "--config.total_steps=20",
          "--config.checkpoint_every_steps=5", "--config.eval_batch_size=128"]


def test_encrypt_train_kill_resume_export_predict(tfds_data_dir, tmp_path):
  key = str(tmp_path / "owner.key")
  data = str(tmp_path / "cifar10_etc")
  workdir = str(tmp_path / "work")
  status, _, err = _cli(encrypt_cli.main, ["keygen", f"--key_file={key}"])
  assert status == 0, err
  status, _, err = _cli(encrypt_cli.main, [
      "encrypt", f"--key_file={key}", "--scheme=etc", "--block_size=16",
      "--source=tfds:cifar10", f"--data_dir={tfds_data_dir}",
      "--split=train,test", f"--limit={LIMIT}", "--format=png",
      f"--out={data}", "--no_progress"])
  assert status == 0, err

  # Train; kill -9 once a checkpoint is committed (as a preemption would).
  log = open(tmp_path / "first.log", "w")
  proc = subprocess.Popen([sys.executable, "-m", *_main_args(data, workdir)],
                          cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  ckpts = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [d for d in os.listdir(ckpts) if d.isdigit() and int(d) >= 5
             and os.path.exists(os.path.join(ckpts, d, "commit_success.txt"))] \
        if os.path.isdir(ckpts) else []
    if steps:
      break
    time.sleep(0.05)
  assert proc.poll() is None, open(tmp_path / "first.log").read()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "results.json"))

  out = _run(_main_args(data, workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert 5 <= results["resumed_from_step"] < 20
  assert results["steps"] == 20 and results["eval_examples"] == LIMIT
  with open(os.path.join(data, "manifest.json")) as f:
    manifest = json.load(f)
  assert results["key_fingerprint"] == manifest["key_fingerprint"]
  assert "loss" in out.stderr and "images/s" in out.stderr and "ETA" in out.stderr
  # It restarted itself with glibc's huge-page tunable where that helps.
  if host_memory.environment(os.environ) is not None:
    assert "malloc huge pages: GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in \
        out.stderr, out.stderr[-3000:]

  # Predict: plain test images + key == the encrypted files of the dataset.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.load("cifar10", split=f"test[:4]", data_dir=tfds_data_dir,
                 download=False)
  plain_files, encrypted_files = [], []
  names = manifest["label_names"]
  for i, ex in enumerate(tfds.as_numpy(ds)):
    path = str(tmp_path / f"plain_{i}.png")
    Image.fromarray(ex["image"]).save(path)
    plain_files.append(path)
    encrypted_files.append(os.path.join(
        data, "test", names[ex["label"]], f"{i:06d}.png"))
  export = os.path.join(workdir, "export")
  status, with_key, err = _cli(predict_cli.main, [
      f"--export={export}", f"--key_file={key}", "--json", *plain_files])
  assert status == 0, err
  status, already, err = _cli(predict_cli.main, [
      f"--export={export}", "--encrypted", "--json", *encrypted_files])
  assert status == 0, err
  a, b = json.loads(with_key), json.loads(already)
  assert [r["label"] for r in a] == [r["label"] for r in b]
  np.testing.assert_allclose([r["probabilities"] for r in a],
                             [r["probabilities"] for r in b], rtol=1e-5)

  wrong = str(tmp_path / "wrong.key")
  assert _cli(encrypt_cli.main, ["keygen", f"--key_file={wrong}"])[0] == 0
  status, _, err = _cli(predict_cli.main, [
      f"--export={export}", f"--key_file={wrong}", *plain_files])
  assert status == 1
  assert "wrong key" in err

  # The key never reaches the cloud's workdir.
  with open(key) as f:
    key_hex = f.read().strip()
  for root, _, files in os.walk(workdir):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        content = f.read()
      assert key_hex.encode() not in content
      assert bytes.fromhex(key_hex) not in content
