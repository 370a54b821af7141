"""launch/tpu_vm.py --dry-run prints every gcloud command it would run."""

import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu_vm.py")


def _dry_run(*args):
  out = subprocess.run(
      [sys.executable, SCRIPT, "--dry-run", *args], capture_output=True,
      text=True, check=True, timeout=60)
  lines = [l for l in out.stdout.splitlines() if l.startswith("+ ")]
  return [shlex.split(l[2:]) for l in lines], out.stderr


def _remote(cmd):
  return next(a for a in cmd if a.startswith("--command="))[len("--command="):]


def test_single_host_all_steps():
  cmds, _ = _dry_run(
      "--name=etc-v4", "--zone=us-central2-b", "--accelerator=v4-8",
      "--data=gs://bucket/cifar10_etc", "--config=configs/vit_etc.py",
      "--workdir=gs://bucket/runs/vit_etc", "--", "--config.dataset=encrypted")
  create = cmds[0]
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "etc-v4"]
  assert "--accelerator-type=v4-8" in create
  assert "--version=tpu-ubuntu2204-base" in create
  assert "--zone=us-central2-b" in create
  # Upload the checkout, install jax[tpu] of the pinned version + etcjax.
  assert cmds[1][0] == "tar" and cmds[1][cmds[1].index("-C") + 1] == ROOT
  assert cmds[2][4] == "scp" and "--worker=all" in cmds[2]
  ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  assert all("--worker=all" in c for c in ssh)
  remotes = [_remote(c) for c in ssh]
  install = next(r for r in remotes if "pip install" in r)
  with open(os.path.join(ROOT, "setup.py")) as f:
    pinned = re.search(r'"jax==([0-9.]+)"', f.read()).group(1)
  assert f"'jax[tpu]=={pinned}'" in install
  assert "pip install -e $HOME/etcjax" in install
  assert any("gcloud storage cp -r gs://bucket/cifar10_etc/*" in r for r in remotes)
  run = remotes[-1]
  assert run.startswith("cd $HOME/etcjax && python3 -m etcjax.main ")
  run_args = shlex.split(run.split("etcjax.main ", 1)[1])
  assert run_args == [
      "--config=configs/vit_etc.py", "--workdir=gs://bucket/runs/vit_etc",
      "--distributed", "--config.data_dir=$HOME/etcjax_data",
      "--config.dataset=encrypted"]
  assert not any("delete" in c for c in cmds)  # delete only when asked


def test_pod_slice_mount_key_and_delete(tmp_path):
  key = tmp_path / "owner.key"
  key.write_text("00" * 32)
  cmds, err = _dry_run(
      "--name=etc-pod", "--zone=us-central2-b", "--accelerator=v4-32",
      "--spot", "--data=gs://bucket/imagenette_etc", "--data-mode=mount",
      f"--key-file={key}", "--config=configs/convmixer_imagenette_etc.py",
      "--workdir=gs://bucket/runs/pod", "--steps=create,data,key,run,delete",
      "--detach")
  assert "--accelerator-type=v4-32" in cmds[0] and "--spot" in cmds[0]
  assert "WARNING" in err and "key" in err
  remotes = [_remote(c) for c in cmds if "ssh" in c]
  assert any("gcsfuse --implicit-dirs --only-dir=imagenette_etc bucket "
             "$HOME/etcjax_data" in r for r in remotes)
  scp = next(c for c in cmds if "scp" in c)
  assert str(key) in scp and "etc-pod:.etcjax/owner.key" in scp
  assert any(r == "chmod 600 $HOME/.etcjax/owner.key" for r in remotes)
  run = next(r for r in remotes if "etcjax.main" in r)
  assert "nohup" in run and "--config.encryption.key_file=$HOME/.etcjax/owner.key" in run
  assert cmds[-1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "etc-pod"]
  # The key's content never appears in any command.
  assert not any("00" * 32 in " ".join(c) for c in cmds)


def test_v5e_runtime_and_direct_data():
  cmds, _ = _dry_run(
      "--name=e", "--zone=us-west4-a", "--accelerator=v5litepod-8",
      "--data=gs://b/tensorflow_datasets", "--data-mode=direct",
      "--workdir=/tmp/w", "--steps=create,data,run")
  assert "--version=v2-alpha-tpuv5-lite" in cmds[0]
  assert len(cmds) == 2  # direct data: nothing to copy
  assert "--config.data_dir=gs://b/tensorflow_datasets" in _remote(cmds[1])


def test_evaluate_entry_runs_on_worker_0_with_the_data_key_and_out(tmp_path):
  key = tmp_path / "eval.key"
  key.write_text("11" * 32)
  cmds, err = _dry_run(
      "--name=ev", "--zone=us-central2-b", "--accelerator=v4-8",
      "--data=gs://b/tensorflow_datasets", f"--key-file={key}",
      "--entry=evaluate", "--workdir=$HOME/eval", "--steps=data,key,run",
      "--", "attacks", "--datasets=cifar10", "--attacks=gan,itn")
  assert "WARNING" in err
  run = cmds[-1]
  assert "--worker=0" in run
  remote = _remote(run)
  assert remote.startswith("cd $HOME/etcjax && python3 -m etcjax.evaluate ")
  assert shlex.split(remote.split("etcjax.evaluate ", 1)[1]) == [
      "attacks", "--datasets=cifar10", "--attacks=gan,itn", "--out=$HOME/eval",
      "--data_dir=$HOME/etcjax_data", "--key_file=$HOME/.etcjax/owner.key"]
  assert not any("11" * 32 in " ".join(c) for c in cmds)


@pytest.mark.parametrize("args, message", [
    (["--entry=evaluate", "--accelerator=v4-32", "--workdir=/tmp/w"],
     "runs one process on one host"),
    (["--entry=evaluate", "--workdir=gs://b/w"], "not to GCS"),
    (["--accelerator=v9-8", "--workdir=gs://b/w"], "unknown accelerator type"),
    (["--accelerator=v4-32", "--workdir=/tmp/w"], "needs a shared gs://"),
    (["--data=/local/data", "--workdir=gs://b/w"], "must be a gs:// folder"),
    (["--steps=create,launch"], "unknown --steps"),
    (["--steps=run"], "--workdir is required"),
])
def test_bad_arguments(args, message):
  out = subprocess.run(
      [sys.executable, SCRIPT, "--dry-run", "--name=x", "--zone=z", *args],
      capture_output=True, text=True, timeout=60)
  assert out.returncode == 2
  assert message in out.stderr
