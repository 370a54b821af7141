"""Every fenced `bash` command of README.md runs as written.

The commands run in order in one scratch folder (so relative paths such as
`owner.key`, `cifar10_etc` and `runs/cm_etc` are what a user in a fresh
clone gets), with the test data and small limits appended (`LIMITS`). A
command that cannot run here must be listed in `NOT_RUN` with the reason;
an unknown `python -m etcjax.*` face or script fails the test, so a new
README command is covered without editing this file.

The etcjax faces with `main(argv)` run in-process (an interpreter start
costs 5-30 s of jax/TensorFlow imports on a loaded machine); the main job
(absl flags are process-global) runs as a subprocess.
"""

import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Commands (by their first words) that cannot run here, with the reason.
NOT_RUN = {
    "python3 -m venv": "creates a virtualenv; the tests run inside one",
    ".": "activates the virtualenv (the tests run inside it)",
    "pip install": "installs from the package index; the environment is "
                   "already installed",
    "pytest": "the test suite itself",
    "ETCJAX_DATA_DIR=/path/to/data pytest": "the test suite itself",
    "python benchmarks/": "benchmarks take minutes and are never tests",
}

# Commands that run only in the slow part, to keep the default part near
# two minutes: the attacks (the learned ones compile and train networks)
# and the second training run (a ViT; the first two cover the main job).
SLOW = ("etcjax.evaluate attacks", "configs/vit_adapted.py")

# Small limits appended per face (a later flag overrides an earlier one).
LIMITS = {
    "etcjax.encrypt encrypt": ["--limit=64"],
    "etcjax.evaluate compressibility": ["--size=smoke", "--limit=8",
                                        "--workers=1", "--no_progress"],
    "etcjax.evaluate attacks": ["--size=smoke", "--limit=4",
                                "--jigsaw_limit=2", "--train_steps=2",
                                "--train_batch=4", "--train_width=8",
                                "--train_keys=2", "--no_progress"],
    "etcjax.evaluate accuracy": ["--size=smoke", "--limit=16",
                                 "--no_progress"],
    "etcjax.evaluate adapted_accuracy": ["--limit=16", "--no_progress"],
}
# The main job runs its config's ':smoke' variant (a small model, split
# slices that every dataset kind reads), shortened further.
MAIN_LIMITS = ["--config.total_steps=6", "--config.checkpoint_every_steps=3"]
# Faces that read CIFAR-10 from tfds get the test data's tfds folder.
NEEDS_TFDS = ("etcjax.evaluate compressibility", "etcjax.evaluate attacks",
              "etcjax.evaluate accuracy", "etcjax.evaluate adapted_accuracy")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck"]


def readme_commands():
  """The README's bash commands, continuation lines joined, `&&` split."""
  text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    block = re.sub(r"\\\n\s*", " ", block)
    for line in block.splitlines():
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      line = re.sub(r"\s+#\s.*$", "", line)  # a trailing comment
      commands.extend(part.strip() for part in line.split("&&"))
  return commands


def _not_run_reason(command):
  for prefix, reason in NOT_RUN.items():
    if command == prefix or command.startswith(prefix + " ") or (
        prefix.endswith("/") and command.startswith(prefix)):
      return reason
  return None


def _face(argv):
  """('etcjax.X', argv after the module) of `python -m etcjax.X ...`."""
  if argv[:2] == ["python", "-m"] and argv[2].startswith("etcjax."):
    return argv[2], argv[3:]
  return None, None


def test_readme_has_commands_and_every_one_is_runnable_or_listed():
  commands = readme_commands()
  assert len(commands) > 15
  for command in commands:
    if _not_run_reason(command):
      continue
    argv = shlex.split(command)
    module, _ = _face(argv)
    assert module or argv[:2] == ["python", "launch/tpu_vm.py"], (
        f"README command {command!r} is neither an etcjax face nor listed "
        "in NOT_RUN with a reason")
  # Every exclusion still matches a README command (no stale entries).
  for prefix in NOT_RUN:
    assert any(c == prefix or c.startswith(prefix) for c in commands), prefix


def _limits(module, args):
  sub = args[0] if args and not args[0].startswith("-") else ""
  return LIMITS.get(f"{module} {sub}".strip(), [])


def _with_test_data(module, args, tfds_dir, cwd):
  # The README's placeholder for prepared data points at the test data;
  # its /tmp folders go to the scratch folder.
  # (/tmp first: the test data itself may live under /tmp.)
  args = [a.replace("=/tmp/", f"={cwd}/tmp/")
          .replace("DATA/tensorflow_datasets", tfds_dir) for a in args]
  sub = args[0] if args and not args[0].startswith("-") else ""
  has_data = any(a.startswith("--data_dir") for a in args)
  if not has_data and (f"{module} {sub}" in NEEDS_TFDS or (
      f"{module} {sub}" == "etcjax.encrypt encrypt"
      and "--source=tfds:cifar10" in args)):
    args.append(f"--data_dir={tfds_dir}")
  if module == "etcjax.main":
    args = [a + ":smoke" if a.startswith("--config=") and ":" not in a
            else a for a in args]
    if not any(a.startswith("--config.data_dir") for a in args):
      args.append(f"--config.data_dir={tfds_dir}")
    args += MAIN_LIMITS
  return args


def _run_in_process(module, args):
  main = importlib.import_module(module).main
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = main(args)
  return status, out.getvalue(), err.getvalue()


def _scratch(tmp_path, tfds_dir):
  """A fresh folder with what the README's commands take as given."""
  cwd = tmp_path / "clone"
  cwd.mkdir()
  os.symlink(os.path.join(ROOT, "configs"), cwd / "configs")
  os.symlink(os.path.join(ROOT, "launch"), cwd / "launch")
  rng = np.random.default_rng(0)
  for name in ("image.png", "cat.png"):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
        cwd / name)
  # PLAIN/export: a plain-image model the key-adapted section starts from
  # (random weights; a ConvMixer whose patch is the block size 16).
  from etcjax import models  # pylint: disable=g-import-not-at-top
  from etcjax.training import export  # pylint: disable=g-import-not-at-top
  kwargs = dict(dim=16, depth=1, patch_size=16, kernel_size=3)
  _, variables = models.create("ConvMixer-256/8", 10, 32, **kwargs)
  shape = [32, 32, 3]
  export.save(str(cwd / "PLAIN" / "export"), variables, {
      "config_name": "readme", "model": "ConvMixer-256/8",
      "model_kwargs": kwargs, "num_classes": 10,
      "label_names": CIFAR10_CLASSES, "image_shape": shape,
      "input_shape": shape, "scheme": None, "block_size": None,
      "key_fingerprint": None, "jpeg_quality": None, "train_steps": 0,
      "eval_accuracy": None})
  env = dict(os.environ, TFDS_DATA_DIR=tfds_dir,
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return cwd, env


def _run_readme(tmp_path, tfds_dir, monkeypatch, slow):
  cwd, env = _scratch(tmp_path, tfds_dir)
  monkeypatch.chdir(cwd)
  monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
  ran = []
  for command in readme_commands():
    if _not_run_reason(command):
      continue
    if not slow and any(flag in command for flag in SLOW):
      continue  # The slow part runs every command.
    argv = shlex.split(command)
    module, args = _face(argv)
    if module is None:  # launch/tpu_vm.py: print every command only.
      # --dry_run before the '--' that starts the remote command's flags.
      split = argv.index("--") if "--" in argv else len(argv)
      argv = argv[1:split] + ["--dry_run"] + argv[split:]
      result = subprocess.run([sys.executable] + argv,
                              cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120)
      assert result.returncode == 0, (command, result.stderr[-2000:])
      ran.append(command)
      continue
    args = _with_test_data(module, args, tfds_dir, cwd) + _limits(module, args)
    if module == "etcjax.main":
      result = subprocess.run(
          [sys.executable, "-m", module] + args, cwd=cwd,
          env=env, capture_output=True, text=True, timeout=600)
      status, out, err = result.returncode, result.stdout, result.stderr
      if status == 0:
        assert "export:" in out and "TensorBoard:" in out, out
    else:
      status, out, err = _run_in_process(module, args)
    assert status == 0, f"README command {command!r} failed:\n{err[-3000:]}"
    ran.append(command)
  assert not list(cwd.rglob("*.orbax-checkpoint-tmp*"))
  return ran, cwd


def test_readme_commands_run_as_written(tfds_data_dir, tmp_path, monkeypatch):
  ran, cwd = _run_readme(tmp_path, tfds_data_dir, monkeypatch, slow=False)
  # The workflow's relative paths land where the README says.
  assert os.path.isfile(cwd / "owner.key")
  assert os.path.isfile(cwd / "cifar10_etc" / "manifest.json")
  assert os.path.isfile(cwd / "runs" / "cm_etc" / "export" / "export.json")
  assert os.path.isfile(cwd / "ADAPTED" / "export.json")
  assert os.path.isfile(cwd / "RUN" / "report.md")
  assert os.path.isfile(cwd / "tmp" / "etcjax_smoke" / "results.json")
  assert any("etcjax.predict" in c for c in ran)


@pytest.mark.slow
def test_readme_learned_attack_commands_run(tfds_data_dir, tmp_path,
                                            monkeypatch):
  ran, cwd = _run_readme(tmp_path, tfds_data_dir, monkeypatch, slow=True)
  assert sum("etcjax.evaluate attacks" in c for c in ran) >= 3
  assert os.path.isfile(cwd / "tmp" / "vit_adapted" / "export" / "export.json")
