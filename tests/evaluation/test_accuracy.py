"""Accuracy under JPEG: the measurement itself and the export round trip."""

import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax import encryption
from etcjax.evaluation import accuracy
from etcjax.evaluation import tables

KEY = bytes(range(32))


class _DecryptingOracle(nn.Module):
  """Decrypts with a plan, then names the brightest channel of the top-left
  16x16 block (3 classes)."""

  plan: encryption.Plan

  @nn.compact
  def __call__(self, x, train=False):
    del train
    images = jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
    plain = encryption.invert(self.plan, images).astype(jnp.float32)
    return plain[:, :16, :16].mean(axis=(1, 2))


def _quadrant_images(n=24, seed=0):
  """Four solid 16x16 blocks per image; label: top-left block's brightest
  channel, by a margin JPEG cannot erase."""
  rng = np.random.default_rng(seed)
  images, labels = [], []
  while len(images) < n:
    colours = rng.integers(0, 256, (2, 2, 3))
    top = np.sort(colours[0, 0])
    if top[2] - top[1] < 40:
      continue
    images.append(np.repeat(np.repeat(colours, 16, 0), 16, 1).astype(np.uint8))
    labels.append(int(np.argmax(colours[0, 0])))
  return np.stack(images), np.asarray(labels)


def test_accuracy_of_encrypted_compressed_images():
  images, labels = _quadrant_images()
  plan = encryption.make_plan(KEY, "etc", (32, 32, 3))
  right = accuracy.evaluate(_DecryptingOracle(plan), {"params": {}}, images,
                            labels, plan, progress=False)
  assert right == {None: 1.0, 85: 1.0, 80: 1.0}
  wrong_plan = encryption.make_plan(bytes(32), "etc", (32, 32, 3))
  wrong = accuracy.evaluate(_DecryptingOracle(wrong_plan), {"params": {}},
                            images, labels, plan, [None, 85], progress=False)
  assert wrong[None] < 0.7 and wrong[85] < 0.7


def test_model_inputs_are_encrypted_then_jpeg_coded():
  images, _ = _quadrant_images(4)
  plan = encryption.make_plan(KEY, "etc_gray", (32, 32, 3))
  x = accuracy.model_inputs(images, plan, 85)
  assert x.shape == (4, 32, 96, 1) and x.dtype == np.uint8
  np.testing.assert_array_equal(accuracy.model_inputs(images, None, None), images)


def test_resize_matches_the_evaluation_pipeline():
  images, _ = _quadrant_images(2)
  out = accuracy.resize(images, (48, 48))
  assert out.shape == (2, 48, 48, 3)
  np.testing.assert_array_equal(out[:, :1, :1], images[:, :1, :1])
  assert accuracy.resize(images, (32, 32)) is images


def _export(tmp_path, tfds_data_dir, scheme):
  from etcjax import models
  from etcjax.data import tfds_source
  from etcjax.training import export
  overrides = dict(dim=8, depth=1, patch_size=4)
  _, variables = models.create("ConvMixer-256/8", 10, 32, **overrides)
  directory = str(tmp_path / "export")
  export.save(directory, variables, dict(
      config_name="test", model="ConvMixer-256/8", model_kwargs=overrides,
      num_classes=10, label_names=tfds_source.label_names("cifar10", tfds_data_dir),
      image_shape=[32, 32, 3], input_shape=[32, 32, 3], scheme=scheme,
      block_size=16 if scheme else None,
      key_fingerprint=encryption.fingerprint(KEY) if scheme else None,
      jpeg_quality=None, train_steps=0, eval_accuracy=None))
  return directory


def test_accuracy_task_on_an_export(tfds_data_dir, tmp_path):
  directory = _export(tmp_path, tfds_data_dir, "etc")
  with pytest.raises(ValueError, match="pass --key_file"):
    accuracy.run(directory, str(tmp_path), dataset="cifar10",
                 data_dir=tfds_data_dir, progress=False)
  with pytest.raises(encryption.KeyMismatchError):
    accuracy.run(directory, str(tmp_path), dataset="cifar10", key=bytes(32),
                 data_dir=tfds_data_dir, progress=False)
  path = accuracy.run(directory, str(tmp_path), dataset="cifar10", key=KEY,
                      data_dir=tfds_data_dir, limit=64, progress=False)
  _, rows = tables.read_csv(os.path.join(path, "accuracy.csv"))
  assert rows[0]["images"] == "64"
  for column in ("uncompressed", "JPEG QF85", "JPEG QF80"):
    assert 0.0 <= float(rows[0][column]) <= 1.0
