"""load_pretrained on our own orbax and .npz checkpoints, and name aliases."""

import re

import jax
import numpy as np
import pytest

from etcjax import models
from etcjax.models import checkpoint
from random_variables import random_variables  # tests/models is on sys.path

CONVMIXER = dict(dim=8, depth=1, patch_size=2, kernel_size=3)


def _convmixer(seed):
  _, shapes = models.create("ConvMixer-256/8", 10, 8, init=False, **CONVMIXER)
  return random_variables(shapes, seed)


def _assert_trees_equal(a, b):
  flat_a, flat_b = checkpoint.flatten(a), checkpoint.flatten(b)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)


def test_orbax_variables_round_trip(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  saved = _convmixer(seed=1)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "variables", saved)
  checkpointer.wait_until_finished()
  checkpointer.close()
  loaded = models.load_pretrained(str(tmp_path / "variables"), _convmixer(2),
                                  "ConvMixer-256/8")
  _assert_trees_equal(loaded, saved)


def test_npz_round_trip_with_batch_stats_and_params_only(tmp_path):
  saved = _convmixer(seed=1)
  models.save_npz(str(tmp_path / "all.npz"), saved)
  init = _convmixer(seed=2)
  _assert_trees_equal(
      models.load_pretrained(str(tmp_path / "all.npz"), init, "ConvMixer-256/8"),
      saved)
  # A params-only file keeps the model's own BatchNorm statistics.
  models.save_npz(str(tmp_path / "params.npz"), saved["params"])
  loaded = models.load_pretrained(str(tmp_path / "params.npz"), init,
                                  "ConvMixer-256/8")
  _assert_trees_equal(loaded["params"], saved["params"])
  _assert_trees_equal(loaded["batch_stats"], init["batch_stats"])
  # A bare params tree in, a params tree out.
  _assert_trees_equal(models.load_pretrained(
      str(tmp_path / "params.npz"), init["params"], "ConvMixer-256/8"),
                      saved["params"])


def test_head_of_the_same_size_is_kept(tmp_path):
  saved = _convmixer(seed=1)
  models.save_npz(str(tmp_path / "c.npz"), saved)
  loaded = models.load_pretrained(str(tmp_path / "c.npz"), _convmixer(2),
                                  "ConvMixer-256/8")
  np.testing.assert_array_equal(loaded["params"]["head"]["kernel"],
                                saved["params"]["head"]["kernel"])


def test_linen_style_block_names_are_aliased(tmp_path):
  _, shapes = models.create("ViT-Ti_16", 10, 32, num_layers=2, init=False)
  published = checkpoint.flatten(random_variables(shapes)["params"])
  renames = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
             "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"}
  linen = {re.sub("|".join(renames), lambda m: renames[m.group(0)], k): v
           for k, v in published.items()}
  assert "Transformer/encoderblock_1/LayerNorm_1/scale" in linen
  np.savez(tmp_path / "linen.npz", **linen)
  init = random_variables(shapes, seed=3)
  loaded = models.load_pretrained(str(tmp_path / "linen.npz"), init,
                                  "ViT-Ti_16")
  _assert_trees_equal(loaded["params"], checkpoint.unflatten(published))


def test_checkpoint_of_another_model_is_refused(tmp_path):
  models.save_npz(str(tmp_path / "c.npz"), _convmixer(1))
  _, shapes = models.create("ViT-Ti_16", 10, 32, num_layers=1, init=False)
  with pytest.raises(models.CheckpointMismatchError,
                     match=r"missing from checkpoint: cls \(1, 1, 192\)"):
    models.load_pretrained(str(tmp_path / "c.npz"), random_variables(shapes),
                           "ViT-Ti_16")
