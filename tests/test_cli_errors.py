"""User mistakes in the CLIs: one line, exit status 2 for usage, 1 for
failures, no traceback; offline without data the main job stops at once."""

import argparse
import os
import subprocess
import sys
import time

import pytest

from etcjax import adapt
from etcjax import command_line
from etcjax import evaluate
from etcjax import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/convmixer_cifar10_etc.py"


def _main(*args, env=None, cwd=ROOT):
  start = time.time()
  result = subprocess.run([sys.executable, "-m", "etcjax.main", *args],
                          capture_output=True, text=True, cwd=cwd,
                          env=env or os.environ, timeout=300)
  return result, time.time() - start


def _error_lines(stderr):
  return [l for l in stderr.splitlines() if l.startswith("error:")]


def test_paths_aliases_and_one_line_messages(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert command_line.resolve_path("runs/x") == str(tmp_path / "runs" / "x")
  assert command_line.resolve_path("~/k") == os.path.expanduser("~/k")
  assert command_line.resolve_path("gs://b/x") == "gs://b/x"
  p = argparse.ArgumentParser()
  p.add_argument("--key_file", type=command_line.path_arg)
  command_line.add_alias(p, "--key", "--key_file", type=command_line.path_arg)
  assert p.parse_args(["--key=k"]).key_file == str(tmp_path / "k")
  assert "--key is deprecated, use --key_file" in capsys.readouterr().err
  wrapped = ("flag --config=c.py:x: Error whilst parsing config file: "
             "Traceback (most recent call last):\n  File \"c.py\", line 1\n"
             "etcjax.training.default_config.ConfigError: unknown config "
             "variant(s) ['x']")
  assert command_line.one_line(wrapped) == (
      "error: flag --config=c.py:x: unknown config variant(s) ['x']")


@pytest.mark.parametrize("argv, status, words", [
    ([f"--config={CONFIG[:-3]}_nope.py", "--workdir=w"], 2,
     ["No such file", "_nope.py"]),
    ([f"--config={CONFIG}:bogus", "--workdir=w"], 2,
     ["unknown config variant", "smoke"]),
    ([f"--config={CONFIG}:smoke", "--workdir=w", "--bogus_flag"], 2,
     ["bogus_flag"]),
])
def test_main_config_mistakes_are_one_line(argv, status, words, tmp_path):
  result, _ = _main(*[a.replace("configs/", os.path.join(ROOT, "configs/"))
                       for a in argv], cwd=tmp_path)
  assert result.returncode == status, result.stderr[-2000:]
  [line] = _error_lines(result.stderr)
  assert all(w in line for w in words), line
  assert "Traceback" not in result.stderr


def test_main_offline_without_data_fails_at_once(tmp_path):
  """No data, no download: one line naming what to set, nothing in ~."""
  home = tmp_path / "home"
  home.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "TFDS_DATA_DIR"}
  env["HOME"] = str(home)
  result, seconds = _main(f"--config={ROOT}/{CONFIG}:smoke",
                          "--workdir=runs/x", env=env, cwd=tmp_path)
  assert result.returncode == 1, result.stderr[-2000:]
  [line] = _error_lines(result.stderr)
  for words in ("--config.data_dir", "TFDS_DATA_DIR", "--download"):
    assert words in line
  assert "Traceback" not in result.stderr
  assert seconds < 90  # imports included; the download retries took 3.5 min
  assert not (home / "tensorflow_datasets").exists()
  assert not (tmp_path / "runs").exists()


def test_main_help_lists_config_fields_with_comments():
  result, _ = _main(f"--config={CONFIG}:smoke", "--help")
  assert result.returncode == 0
  out = result.stdout
  assert "--config.encryption.key_file=''" in out
  assert "Only the path is stored, never the key" in out
  assert "--config.total_steps=20" in out  # the config's value, not default
  assert "--download" in out and "--workdir" in out


def _subparsers(parser):
  return next(a for a in parser._actions  # pylint: disable=protected-access
              if isinstance(a, argparse._SubParsersAction)).choices  # pylint: disable=protected-access


@pytest.mark.parametrize("face", [evaluate, adapt])
def test_every_flag_of_every_task_is_documented(face):
  for task, sub in _subparsers(face._parser()).items():  # pylint: disable=protected-access
    for action in sub._actions:  # pylint: disable=protected-access
      if action.option_strings and action.dest != "help":
        assert action.help, f"{task} {action.option_strings} has no help"


def test_evaluate_knows_the_adapted_tasks():
  tasks = _subparsers(evaluate._parser())  # pylint: disable=protected-access
  assert {"adapted_accuracy", "adapted_key_recovery"} <= set(tasks)


def test_predict_missing_export_is_one_line(tmp_path, capsys):
  assert predict.main([f"--export={tmp_path / 'none'}", "x.png"]) == 1
  err = capsys.readouterr().err
  assert len(_error_lines(err)) == 1 and "export" in err
  assert evaluate.main(["visual", "--datasets=nope", f"--out={tmp_path}"]) == 1
  err = capsys.readouterr().err
  assert _error_lines(err) == [err.strip()] and "unknown dataset" in err
