"""Key-adapted models classify encrypted images exactly as plain ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax import encryption
from etcjax import models
from etcjax.evaluation.attacks import adapted_model_key_recovery
from etcjax.models import key_adaptation

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _normalise(images):
  return jnp.asarray(images, jnp.float32) / 127.5 - 1


def _random_params(variables, seed=0):
  """Random values everywhere (the default head is zeros, which hides bugs)."""
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      0.2 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("image_size", [32, 224])
def test_adapted_vit_on_encrypted_equals_plain(image_size):
  module, variables = models.create("ViT-Ti_16", 10, image_size,
                                    num_layers=2)
  variables = _random_params(variables)
  images = np.random.default_rng(0).integers(
      0, 256, (3, image_size, image_size, 3), np.uint8)
  plan = encryption.make_plan(KEY, "block_common", images.shape[1:], 16)
  encrypted = encryption.apply(plan, images)
  adapted = {"params": key_adaptation.adapt_vit(variables["params"], plan)}

  plain_logits = module.apply(variables, _normalise(images))
  adapted_logits = module.apply(adapted, _normalise(encrypted))
  np.testing.assert_allclose(adapted_logits, plain_logits, rtol=1e-4, atol=1e-4)
  # Without adaptation (or with another key) the logits are different.
  assert not np.allclose(module.apply(variables, _normalise(encrypted)),
                         plain_logits, atol=1e-2)
  other = key_adaptation.adapt_vit(
      variables["params"],
      encryption.make_plan(OTHER_KEY, "block_common", images.shape[1:], 16))
  assert not np.allclose(module.apply({"params": other}, _normalise(encrypted)),
                         plain_logits, atol=1e-2)


def test_adapted_convmixer_in_block_steps():
  module, variables = models.create("ConvMixer-256/8", 10, 32, dim=32, depth=2,
                                    patch_size=4, kernel_size=3)
  variables = {"params": _random_params(variables["params"]),
               "batch_stats": variables["batch_stats"]}
  images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), np.uint8)
  plan = encryption.make_plan(KEY, "block_common", (32, 32, 3), 4,
                              steps=("pixel_shuffle", "negpos", "channel"))
  adapted = dict(variables, params=key_adaptation.adapt_patch_conv(
      variables["params"], plan))
  np.testing.assert_allclose(
      module.apply(adapted, _normalise(encryption.apply(plan, images))),
      module.apply(variables, _normalise(images)), rtol=1e-4, atol=1e-4)


def test_convmixer_refuses_block_scrambling():
  _, variables = models.create("ConvMixer-256/8", 10, 32, dim=16, depth=1,
                               patch_size=4, kernel_size=3)
  plan = encryption.make_plan(KEY, "block_common", (32, 32, 3), 4)
  with pytest.raises(key_adaptation.AdaptationError, match="scrambling"):
    key_adaptation.adapt_patch_conv(variables["params"], plan)


def test_per_block_etc_and_mismatched_sizes_are_refused():
  _, variables = models.create("ViT-Ti_16", 10, 32, num_layers=1)
  with pytest.raises(key_adaptation.AdaptationError, match="different in-block"):
    key_adaptation.adapt_vit(variables["params"],
                             encryption.make_plan(KEY, "etc", (32, 32, 3), 16))
  with pytest.raises(key_adaptation.AdaptationError, match="patch size"):
    key_adaptation.adapt_vit(
        variables["params"],
        encryption.make_plan(KEY, "block_common", (32, 32, 3), 8))
  with pytest.raises(key_adaptation.AdaptationError, match="blocks"):
    key_adaptation.adapt_vit(
        variables["params"],
        encryption.make_plan(KEY, "block_common", (64, 64, 3), 16))
  with pytest.raises(key_adaptation.AdaptationError, match="cannot be absorbed"):
    key_adaptation.adapt_vit(variables["params"],
                             encryption.make_plan(KEY, "le", (32, 32, 3)))


def test_etc_scrambling_only_is_absorbed():
  module, variables = models.create("ViT-Ti_16", 10, 64, num_layers=1)
  variables = _random_params(variables)
  plan = encryption.make_plan(KEY, "etc", (64, 64, 3), 16, steps=("scramble",))
  images = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3), np.uint8)
  adapted = {"params": key_adaptation.adapt_vit(variables["params"], plan)}
  np.testing.assert_allclose(
      module.apply(adapted, _normalise(encryption.apply(plan, images))),
      module.apply(variables, _normalise(images)), rtol=1e-4, atol=1e-4)


def test_plan_round_trips_through_block_transform():
  plan = encryption.make_plan(KEY, "block_common", (64, 32, 3), 16)
  rebuilt = key_adaptation.plan_from_block_transform(
      key_adaptation.block_transform(plan), (64, 32, 3))
  np.testing.assert_array_equal(rebuilt.gather, plan.gather)
  np.testing.assert_array_equal(rebuilt.xor, plan.xor)


def test_key_recovery_from_public_and_adapted_weights():
  _, variables = models.create("ViT-Ti_16", 10, 64, num_layers=1)
  public = _random_params(variables)["params"]
  plan = encryption.make_plan(KEY, "block_common", (64, 64, 3), 16)
  adapted = key_adaptation.adapt_vit(public, plan)
  # Fine-tuning moves the weights a little; the rows still match.
  noise = _random_params({"p": adapted}, seed=3)["p"]
  tuned = jax.tree.map(lambda a, n: a + 0.02 * n, adapted, noise)
  result = adapted_model_key_recovery.recover(public, tuned, (64, 64, 3), plan)
  assert result.in_block_accuracy == 1.0
  assert result.block_order_accuracy == 1.0
  images = np.random.default_rng(4).integers(0, 256, (2, 64, 64, 3), np.uint8)
  np.testing.assert_array_equal(
      encryption.invert(result.plan, encryption.apply(plan, images)), images)


def test_per_position_embedding_shapes_and_shared_equivalence():
  module, variables = models.create("ViT-Ti_16", 10, 64, num_layers=1)
  variables = _random_params(variables)
  pp_module, pp_shapes = models.create("ViT-Ti_16", 10, 64, num_layers=1,
                                       per_position_embedding=True, init=False)
  assert pp_shapes["params"]["embedding"]["kernel"].shape == (16, 16, 16, 3, 192)
  assert pp_shapes["params"]["embedding"]["bias"].shape == (192,)
  per_position = {"params": key_adaptation.to_per_position(
      variables["params"], 16)}
  jax.tree.map(lambda a, b: None if a.shape == b.shape else pytest.fail(
      f"{a.shape} != {b.shape}"), per_position, pp_shapes)
  images = np.random.default_rng(5).integers(0, 256, (2, 64, 64, 3), np.uint8)
  np.testing.assert_allclose(pp_module.apply(per_position, _normalise(images)),
                             module.apply(variables, _normalise(images)),
                             rtol=1e-5, atol=1e-5)
  # Another image size is refused with a clear error.
  with pytest.raises(ValueError, match="per-position"):
    pp_module.apply(per_position, jnp.zeros((1, 32, 32, 3)))


def test_per_position_vit_absorbs_paper_etc_exactly():
  """The paper's EtC (per-block transforms and scrambling) is absorbed."""
  module, variables = models.create("ViT-Ti_16", 10, 64, num_layers=2)
  variables = _random_params(variables)
  pp_module = models.build("ViT-Ti_16", 10, num_layers=2,
                           per_position_embedding=True)
  plan = encryption.make_plan(KEY, "etc", (64, 64, 3), 16)
  images = np.random.default_rng(6).integers(0, 256, (2, 64, 64, 3), np.uint8)
  adapted = {"params": key_adaptation.adapt(
      key_adaptation.to_per_position(variables["params"], 16), plan)}
  np.testing.assert_allclose(
      pp_module.apply(adapted, _normalise(encryption.apply(plan, images))),
      module.apply(variables, _normalise(images)), rtol=1e-4, atol=1e-4)


def test_per_position_convmixer_absorbs_etc_without_scrambling():
  module, variables = models.create("ConvMixer-256/8", 10, 32, dim=16, depth=1,
                                    patch_size=4, kernel_size=3)
  variables = {"params": _random_params(variables["params"]),
               "batch_stats": variables["batch_stats"]}
  pp_module = models.build("ConvMixer-256/8", 10, dim=16, depth=1,
                           patch_size=4, kernel_size=3,
                           per_position_embedding=True)
  plan = encryption.make_plan(KEY, "etc", (32, 32, 3), 4,
                              steps=("rotate_flip", "negpos", "channel"))
  images = np.random.default_rng(7).integers(0, 256, (2, 32, 32, 3), np.uint8)
  adapted = dict(variables, params=key_adaptation.adapt(
      key_adaptation.to_per_position(variables["params"], 64), plan))
  np.testing.assert_allclose(
      pp_module.apply(adapted, _normalise(encryption.apply(plan, images))),
      module.apply(variables, _normalise(images)), rtol=1e-4, atol=1e-4)
  # The shared kernel cannot, and scrambling is refused for convolutions.
  with pytest.raises(key_adaptation.AdaptationError, match="per_position"):
    key_adaptation.adapt(variables["params"], plan)
  with pytest.raises(key_adaptation.AdaptationError, match="scrambling"):
    key_adaptation.adapt(adapted["params"],
                         encryption.make_plan(KEY, "etc", (32, 32, 3), 4))
