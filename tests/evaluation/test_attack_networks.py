"""The learned attacks' networks: exact reformulations, pixel cells, training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax import encryption
from etcjax.evaluation.attacks import itn_attack
from etcjax.evaluation.attacks import networks
from etcjax.evaluation.attacks import threat_model


def test_upsample_is_the_2x2_stride_2_transposed_convolution():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5))
  conv_t = nn.ConvTranspose(6, (2, 2), strides=(2, 2))
  params = conv_t.init(jax.random.key(1), x)["params"]
  # flax's transposed convolution applies its kernel spatially flipped.
  kernel = jnp.transpose(params["kernel"][::-1, ::-1], (2, 0, 1, 3))
  dense = {"Dense_0": {"kernel": kernel.reshape(5, 4 * 6),
                       "bias": jnp.tile(params["bias"], 4)}}
  got = networks.Upsample2x(6).apply({"params": dense}, x)
  np.testing.assert_allclose(got, conv_t.apply({"params": params}, x),
                             atol=1e-5)


def test_max_pool_2x2_matches_flax():
  x = jax.random.normal(jax.random.key(0), (2, 6, 8, 3))
  np.testing.assert_array_equal(
      networks.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


@pytest.mark.parametrize("cells", [1, 4])
def test_unet_on_pixel_cells_keeps_shape_and_range(cells):
  size = threat_model.TrainingSize(steps=1, batch_size=2, width=4, levels=2,
                                   space_to_depth=cells)
  module = networks.generator(size, (16, 24, 3))
  x = jax.random.uniform(jax.random.key(0), (2, 16, 24, 3), minval=-1)
  y, _ = jax.jit(module.init_with_output)(jax.random.key(1), x)
  assert y.shape == x.shape
  assert float(jnp.max(jnp.abs(y))) <= 1.0
  disc = networks.discriminator(size, (16, 24, 3))
  logits, _ = jax.jit(disc.init_with_output)(jax.random.key(2), x)
  assert logits.shape[0] == 2 and logits.shape[-1] == 1


def test_networks_refuse_images_that_do_not_fit_their_cells_and_levels():
  size = threat_model.TrainingSize(steps=1, batch_size=2, width=4, levels=3,
                                   space_to_depth=2)
  with pytest.raises(ValueError, match="multiples of 8, got 36x36"):
    networks.generator(size, (36, 36, 3))
  with pytest.raises(ValueError, match="multiples of 8"):
    networks.discriminator(size, (32, 20, 3))


def test_itn_training_lowers_the_loss():
  # The images differ only by a colour offset, so a network can lower the
  # loss by learning their mean alone: this checks that training and its
  # gradients work, not how strong the attack is.
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:32, 0:32]
  base = np.stack([y * 8, x * 8, (x + y) * 4], -1)
  plain = np.clip(base[None] + rng.integers(-20, 20, (64, 1, 1, 3)), 0,
                  255).astype(np.uint8)
  size = threat_model.TrainingSize(steps=60, batch_size=8, width=8, levels=2,
                                   learning_rate=3e-3, num_keys=4)
  plan = encryption.make_plan(bytes(32), "etc", (32, 32, 3))
  context = threat_model.AttackContext(
      scheme="etc", block_size=16, steps=None, image_shape=(32, 32, 3),
      encrypted_shape=(32, 32, 3), representation=plan.representation,
      encrypted=np.asarray(encryption.apply(plan, plain[:4])),
      public_plain=plain, public_encrypted=plain[:0], training=size,
      progress=False)
  _, _, losses = itn_attack.train(context)
  assert len(losses) == 60
  assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
