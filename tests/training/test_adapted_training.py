"""configs/vit_adapted.py: a pretrained ViT key-adapted before fine-tuning."""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from etcjax import encryption
from etcjax import models
from etcjax import predict
from etcjax.models import key_adaptation
from etcjax.training import default_config
from etcjax.training import export
from etcjax.training import train
from training import tiny_runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_fake_vit_npz(path, **kwargs):
  """tests/models/test_vit_checkpoint.py's vit_jax-format checkpoint writer."""
  spec = importlib.util.spec_from_file_location(
      "vit_checkpoint_helpers",
      os.path.join(ROOT, "tests", "models", "test_vit_checkpoint.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.write_fake_vit_npz(path, **kwargs)


def _smoke_config(folder, npz, key_file, variant):
  config = default_config.load_sibling(
      "vit_adapted.py", os.path.join(ROOT, "configs", "x")).get_config(variant)
  assert config.adapt_pretrained
  # The smoke recipe on tiny synthetic data, with a one-layer ViT-Ti.
  config.dataset, config.data_dir = "folder", folder
  config.train_split, config.eval_split = "train", "test"
  config.model_kwargs = dict(config.model_kwargs.to_dict(), num_layers=1)
  config.pretrained_path = npz
  config.encryption.key_file = key_file
  config.batch_size = config.eval_batch_size = 16
  config.total_steps = 2
  # A learning rate this small leaves the adapted parameters in place.
  config.optim.update(name="sgd", schedule="constant", learning_rate=1e-12,
                      warmup_steps=0)
  return config


@pytest.mark.slow  # ~30 s each on 2 loaded CPU cores: compiles ViT steps.
@pytest.mark.parametrize("variant,scheme", [
    ("smoke", "block_common"), ("smoke,per_position", "etc")])
def test_vit_adapted_smoke_starts_from_the_adapted_checkpoint(
    tmp_path, variant, scheme):
  folder = tiny_runs.make_image_folder(str(tmp_path / "data"), per_class=4,
                                       size=64)
  npz = str(tmp_path / "ViT-Ti_16.npz")
  # An 'ImageNet-21k' checkpoint: 21843 classes, 224x224 position grid.
  _write_fake_vit_npz(npz, num_classes=21843, image_size=224, num_layers=1)
  key = encryption.generate_key()
  key_file = str(tmp_path / "owner.key")
  encryption.save_key(key_file, key)
  workdir = tmp_path / "work"
  train.train_and_evaluate(_smoke_config(folder, npz, key_file, variant),
                           str(workdir))

  _, variables, info = export.load(str(workdir / "export"))
  assert info["scheme"] == scheme and info["block_size"] == 16
  assert info["key_fingerprint"] == encryption.fingerprint(key)
  assert info["adaptation"]["from_public_weights"]
  assert "SECURITY" in info["adaptation"]["warning"]

  # The exported model is the pretrained one adapted with the key: on
  # encrypted images it gives the pretrained model's logits on plain ones.
  module, init = models.create("ViT-Ti_16", 4, 64, num_layers=1)
  pretrained = jax.device_get(
      models.load_pretrained(npz, init, "ViT-Ti_16")["params"])
  plan = encryption.make_plan(key, scheme, (64, 64, 3), 16)
  if "per_position" in variant:
    # The in21k kernel repeated at the 4x4 positions, then adapted per block.
    assert info["adaptation"]["per_position"]
    expected = key_adaptation.adapt_vit(
        key_adaptation.to_per_position(pretrained, 16), plan)
  else:
    expected = key_adaptation.adapt_vit(pretrained, plan)
  got = jax.device_get(variables["params"])
  for name in ("embedding", "Transformer"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 got[name], expected[name])
  images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), np.uint8)
  plain = dict(got, embedding=pretrained["embedding"],
               Transformer=pretrained["Transformer"])
  expected_probs = jax.nn.softmax(module.apply(
      {"params": plain}, images.astype(np.float32) / 127.5 - 1))
  classifier = predict.Classifier(str(workdir / "export"))
  _, probs = classifier.classify(images, key)
  np.testing.assert_allclose(probs, expected_probs, atol=1e-5)

  # Only the fingerprint is ever written, never the key.
  for root, _, files in os.walk(workdir):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        data = f.read()
      assert key not in data and key.hex().encode() not in data, name


def test_adapt_pretrained_needs_encrypted_images(tmp_path):
  folder = tiny_runs.make_image_folder(str(tmp_path / "data"), per_class=2)
  config = tiny_runs.tiny_config(folder)
  config.adapt_pretrained = True
  with pytest.raises(ValueError, match="plain images"):
    train.train_and_evaluate(config, str(tmp_path / "work"))
