"""launch/tpu_vm.py --dry_run prints every gcloud command it would run."""

import json
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
      [sys.executable, SCRIPT, "--dry_run", *args], capture_output=True,
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
      "--spot", "--data=gs://bucket/imagenette_etc", "--data_mode=mount",
      f"--key_file={key}", "--config=configs/convmixer_imagenette_etc.py",
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
      "--data=gs://b/tensorflow_datasets", "--data_mode=direct",
      "--workdir=/tmp/w", "--steps=create,data,run")
  assert "--version=v2-alpha-tpuv5-lite" in cmds[0]
  assert len(cmds) == 2  # direct data: nothing to copy
  assert "--config.data_dir=gs://b/tensorflow_datasets" in _remote(cmds[1])


def test_evaluate_entry_runs_on_worker_0_with_the_data_key_and_out(tmp_path):
  key = tmp_path / "eval.key"
  key.write_text("11" * 32)
  cmds, err = _dry_run(
      "--name=ev", "--zone=us-central2-b", "--accelerator=v4-8",
      "--data=gs://b/tensorflow_datasets", f"--key_file={key}",
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
      [sys.executable, SCRIPT, "--dry_run", "--name=x", "--zone=z", *args],
      capture_output=True, text=True, timeout=60)
  assert out.returncode == 2
  assert message in out.stderr


def test_old_hyphenated_flags_still_work_and_warn(tmp_path):
  key = tmp_path / "owner.key"
  key.write_text("00" * 32)
  out = subprocess.run(
      [sys.executable, SCRIPT, "--dry-run", "--name=x", "--zone=z",
       "--data=gs://b/d", "--data-mode=direct", f"--key-file={key}",
       "--workdir=gs://b/w", "--steps=key,run"],
      capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  for old, new in (("--dry-run", "--dry_run"), ("--data-mode", "--data_mode"),
                   ("--key-file", "--key_file")):
    assert f"warning: {old} is deprecated, use {new}" in out.stderr
  assert "--config.data_dir=gs://b/d" in out.stdout  # --data-mode applied


@pytest.mark.parametrize("task, args, message", [
    ("brute_force", ["--data=gs://b/d"], "reads no dataset"),
    ("report", ["--key_file=k.key"], "takes no --key_file"),
    ("adapted_key_recovery", ["--data=gs://b/d"], "reads no dataset"),
])
def test_evaluate_flags_its_task_refuses_are_refused_here(task, args, message):
  out = subprocess.run(
      [sys.executable, SCRIPT, "--dry_run", "--name=x", "--zone=z",
       "--entry=evaluate", "--workdir=$HOME/e", *args, "--", task],
      capture_output=True, text=True, timeout=60)
  assert out.returncode == 2 and message in out.stderr, out.stderr


# Launches covering every remote etcjax command the script generates: the
# main job with each data mode and a key, and etcjax.evaluate with every
# task (with the data and key flags each task takes).
MAIN_LAUNCHES = [
    ["--data=gs://b/cifar10_etc", "--config=configs/vit_etc.py",
     "--workdir=gs://b/w", "--", "--config.dataset=encrypted"],
    ["--data=gs://b/tensorflow_datasets", "--data_mode=direct",
     "--config=configs/convmixer_cifar10_etc.py:smoke", "--workdir=/tmp/w",
     "--key_file=KEY"],
    ["--data=gs://b/imagenette", "--data_mode=mount", "--accelerator=v4-32",
     "--config=configs/vit_plain.py", "--workdir=gs://b/w", "--detach"],
]


def _evaluate_launches():
  from etcjax import evaluate  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(SCRIPT))
  import tpu_vm  # pylint: disable=g-import-not-at-top
  tasks = [a for a in evaluate._parser()._actions  # pylint: disable=protected-access
           if a.dest == "task"][0].choices
  launches = []
  for task in tasks:
    flags = ["--entry=evaluate", "--workdir=$HOME/eval"]
    if task not in tpu_vm.EVALUATE_NO_DATA:
      flags.append("--data=gs://b/tensorflow_datasets")
    if task not in tpu_vm.EVALUATE_NO_KEY:
      flags.append("--key_file=KEY")
    extra = {"accuracy": ["--export=$HOME/export"],
             "adapted_accuracy": ["--plain=$HOME/p", "--adapted=$HOME/a"],
             "adapted_key_recovery": ["--public=$HOME/p",
                                      "--adapted=$HOME/a"]}.get(task, [])
    launches.append(flags + ["--", task] + extra)
  return launches


def _remote_commands(launch, tmp_path):
  """The remote `python3 -m etcjax.X ARGS` of a launch: (X, ARGS)."""
  key = tmp_path / "owner.key"
  key.write_text("00" * 32)
  argv = ["--name=x", "--zone=z", "--steps=run"] + [
      a.replace("KEY", str(key)) for a in launch]
  cmds, err = _dry_run(*argv)
  assert "deprecated" not in err
  out = []
  for cmd in cmds:
    match = re.search(r"python3 -m etcjax\.(\w+) (.*)", _remote(cmd))
    if match:
      # Detached runs wrap the command in sh -c '...' (one more quoting).
      face, args = match.group(1), match.group(2)
      if "nohup sh -c" in _remote(cmd):
        args = shlex.split(_remote(cmd).split("sh -c ", 1)[1])[0]
        face, args = re.search(r"etcjax\.(\w+) (.*)", args).groups()
      out.append((face, shlex.split(args)))
  assert out, cmds
  return out


def test_remote_evaluate_commands_parse_with_the_evaluate_parser(tmp_path,
                                                                capsys):
  """Every task's remote command is valid for `etcjax.evaluate` as it is now,
  with no deprecated flag spelling."""
  from etcjax import evaluate  # pylint: disable=g-import-not-at-top
  for launch in _evaluate_launches():
    [(face, args)] = _remote_commands(launch, tmp_path)
    assert face == "evaluate"
    parsed = evaluate._parser().parse_args(args)  # pylint: disable=protected-access
    assert "deprecated" not in capsys.readouterr().err, args
    assert parsed.task == launch[launch.index("--") + 1]
    assert parsed.out.endswith("$HOME/eval")
    if "--data=gs://b/tensorflow_datasets" in launch:
      assert parsed.data_dir.endswith("$HOME/etcjax_data")
    if "--key_file=KEY" in launch:
      assert parsed.key_file.endswith("$HOME/.etcjax/owner.key")


def test_remote_main_commands_parse_with_the_main_flags(tmp_path):
  """Every remote `etcjax.main` command is valid for its absl flags and
  config flags (parsed by etcjax.main's own flags parser, in a subprocess:
  absl flags are process-global), with no deprecation warning."""
  commands = []
  for launch in MAIN_LAUNCHES:
    [(face, args)] = _remote_commands(launch, tmp_path)
    assert face == "main"
    commands.append(args)
  code = (
      "import json, sys\n"
      "from absl import flags\n"
      "from etcjax import main\n"
      "sys.argv = ['etcjax.main'] + json.loads(sys.argv[1])\n"
      "main._parse_flags(sys.argv)\n"
      "c = flags.FLAGS.config\n"
      "print(json.dumps([c.data_dir, c.encryption.key_file, c.dataset,\n"
      "                  flags.FLAGS.workdir, flags.FLAGS.distributed]))\n")
  # sys.argv is set as `python -m etcjax.main ARGS` sets it: config_flags
  # finds the config's override flags there, not in the list it parses.
  script = tmp_path / "parse_main_flags.py"
  script.write_text(code)
  parsed = []
  for args in commands:  # One process each: absl flags parse once.
    result = subprocess.run(
        [sys.executable, str(script), json.dumps(args)], cwd=ROOT,
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (args, result.stderr[-3000:])
    assert "deprecated" not in result.stderr
    parsed.append(json.loads(result.stdout.splitlines()[-1]))
  assert parsed[0] == ["$HOME/etcjax_data", "", "encrypted", "gs://b/w", True]
  assert parsed[1][:2] == ["gs://b/tensorflow_datasets",
                           "$HOME/.etcjax/owner.key"]
  assert parsed[2][0] == "$HOME/etcjax_data" and parsed[2][3] == "gs://b/w"
