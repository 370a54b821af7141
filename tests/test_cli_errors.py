"""User mistakes in the CLIs: one line, exit status 2 for usage, 1 for
failures, no traceback; offline without data the main job stops at once."""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from etcjax import adapt
from etcjax import command_line
from etcjax import encrypt
from etcjax import encryption
from etcjax import evaluate
from etcjax import models
from etcjax import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/convmixer_cifar10_etc.py"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck"]


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
  env = {k: v for k, v in os.environ.items()
         if k not in ("TFDS_DATA_DIR", "KERAS_HOME", "MPLCONFIGDIR",
                      "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
  env["HOME"] = str(home)
  result, seconds = _main(f"--config={ROOT}/{CONFIG}:smoke",
                          "--workdir=runs/x", env=env, cwd=tmp_path)
  assert result.returncode == 1, result.stderr[-2000:]
  [line] = _error_lines(result.stderr)
  for words in ("--config.data_dir", "TFDS_DATA_DIR", "--download"):
    assert words in line
  assert "Traceback" not in result.stderr
  assert seconds < 90  # imports included; the download retries took 3.5 min
  # Nothing at all: no tfds skeleton, no ~/.keras (Keras, imported by
  # TensorFlow), no matplotlib cache (imported by Keras).
  assert sorted(p.name for p in home.iterdir()) == []
  assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("face", ["encrypt", "evaluate", "predict", "adapt"])
def test_faces_keep_keras_out_of_home(face, tmp_path):
  """Importing a face and then TensorFlow (as its commands do, some only on
  use) creates no ~/.keras; a KERAS_HOME the user set is kept."""
  home = tmp_path / "home"
  home.mkdir()
  env = {k: v for k, v in os.environ.items()
         if k not in ("KERAS_HOME", "MPLCONFIGDIR", "XDG_CONFIG_HOME",
                      "XDG_CACHE_HOME")}
  env["HOME"] = str(home)
  code = (f"import os, etcjax.{face}, tensorflow\n"
          "print(os.environ['KERAS_HOME'])\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(p.name for p in home.iterdir()) == []  # no .keras, .cache
  assert not result.stdout.strip().startswith(str(home))
  if face == "encrypt":  # The user's own choice wins.
    env["KERAS_HOME"] = str(tmp_path / "mine")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.stdout.strip() == str(tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()
    # A matplotlib config folder the user has keeps styling our figures.
    del env["KERAS_HOME"]
    (home / ".config" / "matplotlib").mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-c", "import os, etcjax.encrypt\n"
         "print(os.environ.get('MPLCONFIGDIR'))"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.stdout.strip() == "None"


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


# --------------------------------------------------------------------------
# User errors of the library (etcjax.errors.UserError) are one line in every
# face; anything else is a bug and keeps its traceback.


def _export_of_unknown_model(root):
  """An export folder whose export.json names a model etcjax does not have
  (a hand-edited or newer export): loading it fails before any weights."""
  from etcjax.inference import export  # pylint: disable=g-import-not-at-top
  root.mkdir()
  info = dict(format=export.FORMAT, config_name="x", model="ConvMixer-9/9",
              model_kwargs={}, num_classes=10, label_names=CIFAR10_CLASSES,
              image_shape=[32, 32, 3], input_shape=[32, 32, 3], scheme=None,
              block_size=None, key_fingerprint=None, jpeg_quality=None,
              train_steps=1, eval_accuracy=None)
  (root / export.EXPORT_FILE).write_text(json.dumps(info))
  return str(root)


def _image_folder(root, size):
  """ROOT/train/<class>/<image>.png with two size x size images."""
  for name in ("a", "b"):
    folder = root / "train" / name
    folder.mkdir(parents=True)
    Image.fromarray(np.full((size, size, 3), 9, np.uint8)).save(
        folder / "0.png")
  return str(root)


def _one_line(face, argv, status, words, capsys):
  assert face.main(argv) == status
  err = capsys.readouterr().err
  assert _error_lines(err) == [err.strip()], err  # one line, no traceback
  assert all(w in err for w in words), err


def test_unknown_model_is_one_line_in_every_face(tmp_path, capsys):
  bad = _export_of_unknown_model(tmp_path / "export")
  key_file = str(tmp_path / "k.key")
  encryption.save_key(key_file, encryption.generate_key())
  words = ["unknown model 'ConvMixer-9/9'", "known models", "ConvMixer-256/8"]
  _one_line(predict, [f"--export={bad}", "x.png"], 1, words, capsys)
  _one_line(adapt, ["export", f"--export={bad}", f"--key_file={key_file}",
                    f"--out={tmp_path / 'adapted'}"], 1, words, capsys)
  _one_line(evaluate, ["accuracy", f"--export={bad}",
                       f"--out={tmp_path / 'eval'}", "--no_progress"],
            1, words, capsys)


def test_main_unknown_model_is_one_line(tmp_path):
  result, _ = _main(f"--config={ROOT}/{CONFIG}:smoke", "--workdir=runs/x",
                    "--config.model=ConvMixer-9/9", cwd=tmp_path)
  assert result.returncode == 1, result.stderr[-2000:]
  [line] = _error_lines(result.stderr)
  assert "unknown model 'ConvMixer-9/9'" in line and "known models" in line
  assert "Traceback" not in result.stderr


def test_encrypt_image_shape_and_flag_mistakes(tmp_path, capsys):
  key_file = str(tmp_path / "k.key")
  encryption.save_key(key_file, encryption.generate_key())
  folder = _image_folder(tmp_path / "data", 40)
  base = ["encrypt", f"--key_file={key_file}", f"--source=folder:{folder}",
          "--split=train", "--scheme=etc", "--block_size=16"]
  # 40x40 images in 16x16 blocks: what is wrong and how to fix it.
  _one_line(encrypt, base + [f"--out={tmp_path / 'a'}"], 1,
            ["not a multiple", "16", "--resize=H,W"], capsys)
  _one_line(encrypt, base + [f"--out={tmp_path / 'b'}", "--format=png",
                             "--quality=90"], 2,
            ["--quality applies to --format=jpeg only"], capsys)
  _one_line(encrypt, base + [f"--out={tmp_path / 'c'}", "--resize=32,32",
                             "--format=jpeg", "--scheme=pe"], 1,
            ["not JPEG-compliant"], capsys)
  assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_image_shape_errors_are_user_errors():
  plan = encryption.make_plan(encryption.generate_key(), "etc", (32, 32, 3))
  with pytest.raises(encryption.ImageShapeError, match="made for"):
    encryption.apply(plan, np.zeros((1, 16, 16, 3), np.uint8))
  with pytest.raises(encryption.ImageDtypeError, match="must be uint8"):
    encryption.apply(plan, np.zeros((1, 32, 32, 3), np.float32))
  for error in (encryption.ImageShapeError, encryption.ImageDtypeError,
                encryption.SchemeParameterError, models.UnknownModelError):
    assert command_line.is_user_error(error("x"))
  # Callers that catch the builtin classes keep working.
  assert issubclass(encryption.ImageShapeError, ValueError)
  assert issubclass(encryption.ImageDtypeError, TypeError)
  assert issubclass(models.UnknownModelError, ValueError)


@pytest.mark.parametrize("bug", [ValueError, KeyError, ZeroDivisionError])
def test_a_bug_keeps_its_exception_in_every_face(bug, tmp_path, monkeypatch):
  """A plain ValueError/KeyError from inside the library is a bug: the face
  does not turn it into a one-line 'user error'."""

  def broken(*unused_args, **unused_kwargs):
    raise bug("internal invariant broken")

  key_file = str(tmp_path / "k.key")
  encryption.save_key(key_file, encryption.generate_key())
  monkeypatch.setattr(encryption, "generate_key", broken)
  with pytest.raises(bug, match="internal invariant"):
    encrypt.main(["keygen", f"--key_file={tmp_path / 'new.key'}"])
  monkeypatch.setattr(encryption, "load_key", broken)
  with pytest.raises(bug, match="internal invariant"):
    adapt.main(["export", f"--export={tmp_path}", f"--key_file={key_file}",
                f"--out={tmp_path / 'o'}"])
  monkeypatch.setattr(predict.inference, "Classifier", broken)
  with pytest.raises(bug, match="internal invariant"):
    predict.main([f"--export={tmp_path}", "x.png"])
  monkeypatch.setattr(evaluate.report, "write", broken)
  with pytest.raises(bug, match="internal invariant"):
    evaluate.main(["report", f"--out={tmp_path}"])


def test_a_bug_shows_its_traceback_and_not_status_2(tmp_path):
  """Out of process: the traceback reaches the user (exit status 1, as for
  any uncaught exception), for an argparse face and for the main job."""
  patch_encrypt = (
      "import sys\n"
      "from etcjax import encrypt, encryption\n"
      "def broken():\n"
      "  raise ValueError('internal invariant broken')\n"
      "encryption.generate_key = broken\n"
      f"sys.exit(encrypt.main(['keygen', '--key_file={tmp_path}/k.key']))\n")
  patch_main = (
      "import sys\n"
      "from absl import app\n"
      "from etcjax import main\n"
      "from etcjax.training import train\n"
      "def broken(*args):\n"
      "  return 1 / 0\n"
      "train.train_and_evaluate = broken\n"
      f"sys.argv = ['main', '--config={ROOT}/{CONFIG}:smoke',"
      " '--workdir=runs/x']\n"
      "app.run(main.main, flags_parser=main._parse_flags)\n")
  for code, raised in ((patch_encrypt, "ValueError: internal invariant"),
                       (patch_main, "ZeroDivisionError")):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback (most recent call last)" in result.stderr
    assert raised in result.stderr
    assert not _error_lines(result.stderr)
