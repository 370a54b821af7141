"""train_and_evaluate end to end on a tiny synthetic image folder."""

import json
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from etcjax import encryption
from etcjax import files
from etcjax.training import checkpointing
from etcjax.training import export
from etcjax.training import train
from training import tiny_runs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return tiny_runs.make_image_folder(str(tmp_path_factory.mktemp("folder")))


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("key") / "owner.key")
  encryption.save_key(path, encryption.generate_key())
  return path


def _summary_tags(folder):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tags = set()
  for name in os.listdir(folder):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
      for value in event.summary.value:
        assert value.metadata.plugin_data.plugin_name == "scalars"
        assert tf.make_ndarray(value.tensor).shape == ()
        tags.add(value.tag)
  return tags


def _variables(workdir):
  _, variables, info = export.load(os.path.join(workdir, "export"))
  return jax.tree.map(np.asarray, variables), info


@pytest.fixture(scope="module")
def straight_run(folder, key_file, tmp_path_factory):
  """12 uninterrupted steps, on-the-fly EtC with mixup/CutMix."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = tiny_runs.tiny_config(folder, scheme="etc", block_size=8,
                                 key_file=key_file)
  results = train.train_and_evaluate(config, workdir)
  return workdir, results


def test_run_writes_results_export_and_summaries(straight_run, key_file):
  workdir, results = straight_run
  with open(os.path.join(workdir, "results.json")) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(results))
  fp = encryption.fingerprint(encryption.load_key(key_file))
  assert written["key_fingerprint"] == fp and written["scheme"] == "etc"
  assert written["steps"] == 12 and written["eval_examples"] == 64
  assert written["epochs"] == pytest.approx(12 * 16 / 64)
  assert 0.0 <= written["eval_accuracy"] <= 1.0
  assert written["images_per_second"] > 0
  _, info = _variables(workdir)
  assert info["key_fingerprint"] == fp and info["block_size"] == 8
  assert info["label_names"] == sorted(tiny_runs.CLASSES)
  tags = _summary_tags(os.path.join(workdir, "tensorboard"))
  assert {"train/loss", "train/accuracy", "train/images_per_second",
          "train/learning_rate", "eval/accuracy", "eval/loss"} <= tags
  with open(os.path.join(workdir, train.CONFIG_FILE)) as f:
    assert json.load(f)["encryption"]["fingerprint"] == fp
  # keep_checkpoints=2: only the last two remain.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "8"]


def test_key_never_written_to_workdir(straight_run, key_file):
  workdir, _ = straight_run
  key = encryption.load_key(key_file)
  needles = [key, key.hex().encode(), key.hex().upper().encode()]
  checked = 0
  for root, _, files in os.walk(workdir):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        content = f.read()
      assert not any(n in content for n in needles), os.path.join(root, name)
      checked += 1
  assert checked > 10


def test_second_run_into_a_locked_workdir_is_refused_naming_the_first(
    folder, tmp_path):
  workdir = tmp_path / "run"
  config = tiny_runs.tiny_config(folder)
  # The first run, still going (same lock as train_and_evaluate takes).
  with files.locked_folder(workdir, "etcjax training run", "wait"):
    with pytest.raises(files.FolderLockedError,
                       match=rf"another etcjax training run \(pid {os.getpid()}"
                       rf" on .*\) is writing to {re.escape(str(workdir))}"):
      train.train_and_evaluate(config, str(workdir))
    assert os.listdir(workdir) == [files.LOCK_FILE]  # nothing written
  assert not os.listdir(workdir)  # the lock file goes with the lock


def test_killed_and_resumed_run_matches_straight_run(
    straight_run, folder, key_file, tmp_path):
  config = tiny_runs.tiny_config(folder, scheme="etc", block_size=8,
                                 key_file=key_file)
  config.halt_after_step = 6  # As if preempted after step 6.
  assert train.train_and_evaluate(config, str(tmp_path)) is None
  assert not os.path.exists(tmp_path / "results.json")
  assert not os.path.exists(tmp_path / "export")
  config.halt_after_step = 0
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["resumed_from_step"] == 6
  resumed, _ = _variables(str(tmp_path))
  straight, _ = _variables(straight_run[0])
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  assert results["eval_accuracy"] == straight_run[1]["eval_accuracy"]


def test_resume_with_another_key_is_refused(straight_run, folder, tmp_path):
  other = str(tmp_path / "other.key")
  encryption.save_key(other, encryption.generate_key())
  config = tiny_runs.tiny_config(folder, scheme="etc", block_size=8,
                                 key_file=other)
  with pytest.raises(encryption.KeyMismatchError,
                     match="was trained on images encrypted with key"):
    train.train_and_evaluate(config, straight_run[0])


def test_nan_loss_stops_with_clear_message(folder, tmp_path):
  config = tiny_runs.tiny_config(folder)
  config.optim.update(name="sgd", schedule="constant", learning_rate=1e30)
  config.checkpoint_every_steps = 1  # Every finite state is saved.
  with pytest.raises(train.NonFiniteLossError,
                     match=r"training diverged at step \d+: .*(nan|inf).*"
                     r"Lower config.optim.learning_rate") as error:
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "results.json")
  assert not os.path.exists(tmp_path / "export")
  # The diverged state was never saved: the newest checkpoint is finite.
  diverged = int(re.search(r"diverged at step (\d+)", str(error.value))[1])
  ckpts = checkpointing.Checkpoints(tmp_path / "checkpoints", 1, 2)
  last = ckpts.latest_step()
  ckpts.close()
  assert last is not None and last < diverged
  assert f"the last checkpoint is step {last}" in str(error.value)
  state = ocp.CheckpointManager(tmp_path / "checkpoints").restore(last)
  leaves = jax.tree.leaves(state["state"])
  assert all(np.all(np.isfinite(x)) for x in leaves
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_config_errors(folder, tmp_path):
  config = tiny_runs.tiny_config(folder, scheme="etc", block_size=8)
  with pytest.raises(ValueError, match="needs config.encryption.key_file"):
    train.train_and_evaluate(config, str(tmp_path))
  config = tiny_runs.tiny_config(folder)
  config.batch_size = 0
  with pytest.raises(ValueError, match="batch_size"):
    train.train_and_evaluate(config, str(tmp_path))
