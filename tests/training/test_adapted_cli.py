"""python -m etcjax.adapt: adapted exports, their check, key recovery."""

import json
import os

import jax
import numpy as np
import pytest

from etcjax import adapt
from etcjax import encryption
from etcjax import evaluate
from etcjax.evaluation import adapted_accuracy
from etcjax import models
from etcjax import predict
from etcjax.training import export

LABELS = [f"class_{i}" for i in range(10)]


def _random_export(directory, name, image_size, **kwargs):
  """A plain-image export with random (non-zero) weights, no training."""
  _, variables = models.create(name, 10, image_size, **kwargs)
  leaves, treedef = jax.tree.flatten(variables["params"])
  rngs = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  variables = dict(variables, params=jax.tree.unflatten(treedef, [
      0.2 * jax.random.normal(r, x.shape) for r, x in zip(rngs, leaves)]))
  shape = [image_size, image_size, 3]
  export.save(directory, variables, {
      "config_name": "test", "model": name, "model_kwargs": kwargs,
      "num_classes": 10, "label_names": LABELS, "image_shape": shape,
      "input_shape": shape, "scheme": None, "block_size": None,
      "key_fingerprint": None, "jpeg_quality": None, "train_steps": 0,
      "eval_accuracy": 0.5})
  return str(directory)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("key") / "owner.key")
  encryption.save_key(path, encryption.generate_key())
  return path


@pytest.fixture(scope="module")
def convmixer_export(tmp_path_factory):
  return _random_export(tmp_path_factory.mktemp("cm") / "export",
                        "ConvMixer-256/8", 32, dim=16, depth=1, patch_size=4,
                        kernel_size=3)


def test_adapted_convmixer_export_classifies_encrypted_as_plain(
    tmp_path, key_file, convmixer_export, capsys):
  out = str(tmp_path / "adapted")
  steps = "pixel_shuffle,negpos,channel"
  assert adapt.main(["export", f"--export={convmixer_export}",
                     f"--key_file={key_file}", f"--steps={steps}",
                     f"--out={out}"]) == 0
  assert "SECURITY" in capsys.readouterr().err
  key = encryption.load_key(key_file)
  info = export.read_info(out)
  assert (info["scheme"], info["block_size"], info["encryption_steps"]) == (
      "block_common", 4, steps.split(","))
  assert info["key_fingerprint"] == encryption.fingerprint(key)
  assert info["adaptation"]["source_eval_accuracy"] == 0.5
  assert not info["adaptation"]["from_public_weights"]
  assert info["adaptation"]["check_max_logit_difference"] < 1e-4

  # predict encrypts with the export's steps; same labels and probabilities.
  images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), np.uint8)
  plain_labels, plain_probs = predict.Classifier(convmixer_export).classify(
      images)
  labels, probs = predict.Classifier(out).classify(images, key)
  np.testing.assert_array_equal(labels, plain_labels)
  np.testing.assert_allclose(probs, plain_probs, atol=1e-5)

  # Never overwritten; the key never written.
  assert adapt.main(["export", f"--export={convmixer_export}",
                     f"--key_file={key_file}", f"--steps={steps}",
                     f"--out={out}"]) == 1
  assert "never overwritten" in capsys.readouterr().err
  for root, _, files in os.walk(out):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        data = f.read()
      assert key not in data and key.hex().encode() not in data, name


def test_unabsorbable_plans_and_wrong_inputs_are_refused(
    tmp_path, key_file, convmixer_export, capsys):
  def run(*flags):
    status = adapt.main(["export", f"--export={convmixer_export}",
                         f"--key_file={key_file}",
                         f"--out={tmp_path / 'x'}"] + list(flags))
    return status, capsys.readouterr().err

  status, err = run()  # all steps, including block scrambling
  assert status == 1 and "scrambling cannot be absorbed" in err
  status, err = run("--steps=pixel_shuffle", "--block_size=8")
  assert status == 1 and "block size == patch size" in err
  status, err = run("--scheme=etc", "--steps=rotate_flip")
  assert status == 1 and "per_position" in err
  assert not os.path.exists(tmp_path / "x" / export.EXPORT_FILE)


def test_per_position_export_absorbs_paper_etc(tmp_path, key_file,
                                               convmixer_export):
  out = str(tmp_path / "pp")
  assert adapt.main(["export", f"--export={convmixer_export}",
                     f"--key_file={key_file}", "--scheme=etc",
                     "--steps=rotate_flip,negpos,channel", "--per_position",
                     f"--out={out}"]) == 0
  info = export.read_info(out)
  assert info["model_kwargs"]["per_position_embedding"]
  assert info["adaptation"]["check_max_logit_difference"] < 1e-4


def test_key_recovery_cli(tmp_path, key_file, capsys):
  public = _random_export(tmp_path / "public", "ViT-Ti_16", 64, num_layers=1)
  adapted = str(tmp_path / "adapted")
  assert adapt.main(["export", f"--export={public}", f"--key_file={key_file}",
                     "--from_public_weights", f"--out={adapted}"]) == 0
  info = export.read_info(adapted)
  assert info["adaptation"]["from_public_weights"]
  assert "SECURITY" in info["adaptation"]["warning"]
  out = str(tmp_path / "run")
  # The evaluation task (`adapt key_recovery` below is its old name).
  assert evaluate.main(["adapted_key_recovery", f"--public={public}",
                        f"--adapted={adapted}", f"--key_file={key_file}",
                        f"--out={out}"]) == 0
  with open(os.path.join(out, "adapted_key_recovery", "meta.json")) as f:
    meta = json.load(f)
  assert meta["block_order_accuracy"] == 1.0
  assert meta["in_block_accuracy"] == 1.0
  assert meta["decrypts_exactly"] is True
  assert "| 1.0000 | 1.0000 | True |" in capsys.readouterr().out
  # Results are not replaced without --overwrite (one line, status 1).
  assert adapt.main(["key_recovery", f"--public={public}",
                     f"--adapted={adapted}", f"--out={out}"]) == 1
  err = capsys.readouterr().err
  assert "evaluate adapted_key_recovery" in err and "--overwrite" in err
  assert err.strip().splitlines()[-1].startswith("error: ")


def test_compare_on_cifar10_test_images(tmp_path, key_file, tfds_data_dir):
  plain = _random_export(tmp_path / "plain", "ConvMixer-256/8", 32, dim=16,
                         depth=1, patch_size=4, kernel_size=3)
  # The export's class names must be CIFAR-10's for a real model; compare
  # only checks predictions, so random weights do.
  adapted = str(tmp_path / "adapted")
  assert adapt.main(["export", f"--export={plain}", f"--key_file={key_file}",
                     "--steps=pixel_shuffle,negpos,channel",
                     f"--out={adapted}"]) == 0
  result = adapted_accuracy.run(plain, adapted, encryption.load_key(key_file),
                                str(tmp_path / "run"), data_dir=tfds_data_dir,
                                limit=200, progress=False)
  assert result["images"] == 200
  assert result["differing_predictions"] == 0
  assert result["adapted_accuracy"] == result["plain_accuracy"]
  assert 0.0 <= result["unadapted_accuracy"] <= 1.0
  assert os.path.exists(tmp_path / "run" / "adapted_accuracy" / "cifar10" /
                        "comparison.md")
