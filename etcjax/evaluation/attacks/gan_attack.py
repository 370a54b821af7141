"""GAN-Attack: unpaired translation from encrypted to plain images.

The adversary sees images encrypted with the secret key (one half of the
training set, as a cloud does) and has plain images of the same
distribution (the other half), but no pairs. It trains a CycleGAN (Zhu et
al. 2017) with least-squares adversarial losses: generators G (encrypted ->
plain) and F (plain -> encrypted), PatchGAN discriminators for each
domain, and cycle-consistency F(G(e)) ~ e, G(F(p)) ~ p that keeps G from
ignoring its input. G is then applied to the attacked images.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from etcjax.evaluation import visual_metrics
from etcjax.evaluation.attacks import fitting
from etcjax.evaluation.attacks import networks
from etcjax.evaluation.attacks import threat_model

CYCLE_WEIGHT = 10.0  # CycleGAN's lambda.


def _mse(x, target):
  return jnp.mean((x - target) ** 2)


def _generator_loss(g_params, d_params, encrypted, plain, *, generator,
                    discriminator):
  fake_plain = generator.apply({"params": g_params["to_plain"]}, encrypted)
  fake_enc = generator.apply({"params": g_params["to_encrypted"]}, plain)
  back_enc = generator.apply({"params": g_params["to_encrypted"]}, fake_plain)
  back_plain = generator.apply({"params": g_params["to_plain"]}, fake_enc)
  adversarial = (
      _mse(discriminator.apply({"params": d_params["plain"]}, fake_plain), 1.0)
      + _mse(discriminator.apply({"params": d_params["encrypted"]}, fake_enc), 1.0))
  cycle = (jnp.mean(jnp.abs(back_enc - encrypted))
           + jnp.mean(jnp.abs(back_plain - plain)))
  return adversarial + CYCLE_WEIGHT * cycle, (fake_plain, fake_enc, cycle)


def _discriminator_loss(d_params, real_plain, fake_plain, real_enc, fake_enc,
                        *, discriminator):
  def one(params, real, fake):
    return 0.5 * (_mse(discriminator.apply({"params": params}, real), 1.0)
                  + _mse(discriminator.apply({"params": params},
                                             jax.lax.stop_gradient(fake)), 0.0))
  return (one(d_params["plain"], real_plain, fake_plain)
          + one(d_params["encrypted"], real_enc, fake_enc))


def train_step(state, batch, *, generator: networks.UNet,
               discriminator: networks.PatchDiscriminator,
               tx: optax.GradientTransformation):
  """One CycleGAN step: the generators, then the discriminators.

  Args:
    state: `(g_params, d_params, g_opt, d_opt)`; generators 'to_plain' and
      'to_encrypted', discriminators 'plain' and 'encrypted'.
    batch: {'encrypted', 'plain'}: uint8 `[B, H, W, 3]`, unpaired (secret-key
      images shown as RGB, and other plain images).
    generator: the U-Net of both generators.
    discriminator: the PatchGAN of both discriminators.
    tx: the optimizer of both.

  Returns:
    `(state, metrics)`; metrics {'generator', 'discriminator', 'cycle'}:
    the losses (LSGAN + `CYCLE_WEIGHT` x cycle L1; LSGAN; cycle L1).
  """
  g_params, d_params, g_opt, d_opt = state
  encrypted = networks.to_signed(batch["encrypted"])
  plain = networks.to_signed(batch["plain"])
  g_loss_fn = functools.partial(_generator_loss, generator=generator,
                                discriminator=discriminator)
  (g_loss, (fake_plain, fake_enc, cycle)), g_grads = jax.value_and_grad(
      g_loss_fn, has_aux=True)(g_params, d_params, encrypted, plain)
  updates, g_opt = tx.update(g_grads, g_opt, g_params)
  g_params = optax.apply_updates(g_params, updates)
  d_loss, d_grads = jax.value_and_grad(functools.partial(
      _discriminator_loss, discriminator=discriminator))(
          d_params, plain, fake_plain, encrypted, fake_enc)
  updates, d_opt = tx.update(d_grads, d_opt, d_params)
  d_params = optax.apply_updates(d_params, updates)
  metrics = {"generator": g_loss, "discriminator": d_loss, "cycle": cycle}
  return (g_params, d_params, g_opt, d_opt), metrics


@functools.lru_cache(maxsize=8)
def trainer(generator: networks.UNet,
            discriminator: networks.PatchDiscriminator, learning_rate: float):
  """`(tx, step_fn)`: the optimizer and the bound `train_step`.

  Cached, so the same networks and rate share one step function (and one
  compilation in `fitting.fit`).
  """
  # CycleGAN's Adam settings.
  tx = optax.adam(learning_rate, b1=0.5)
  return tx, functools.partial(train_step, generator=generator,
                               discriminator=discriminator, tx=tx)


def train(context: threat_model.AttackContext, mesh: Optional[Mesh] = None
          ) -> Tuple[networks.UNet, Dict, List[Dict[str, float]]]:
  """Trains the CycleGAN on the unpaired halves.

  Args:
    context: the attack context: `public_encrypted` (secret-key images of
      one half of the training set) and `public_plain` (plain images of the
      other half).
    mesh: devices to train on (default: all; see `fitting.fit`).

  Returns:
    `(generator, params, history)`: the encrypted -> plain generator, its
    parameters and every step's losses.
  """
  size = context.training
  if len(context.public_encrypted) == 0 or len(context.public_plain) == 0:
    raise ValueError("the GAN attack needs encrypted and plain training images")
  generator = networks.generator(size, context.image_shape)
  discriminator = networks.discriminator(size, context.image_shape)
  h, w, _ = context.image_shape
  dummy = jnp.zeros((1, h, w, 3), jnp.float32)
  keys = jax.random.split(jax.random.key(context.seed), 4)
  g_params = {name: generator.init(k, dummy)["params"]
              for name, k in zip(("to_plain", "to_encrypted"), keys[:2])}
  d_params = {name: discriminator.init(k, dummy)["params"]
              for name, k in zip(("plain", "encrypted"), keys[2:])}
  tx, step_fn = trainer(generator, discriminator, size.learning_rate)
  state = (g_params, d_params, tx.init(g_params), tx.init(d_params))
  encrypted_pool = visual_metrics.as_rgb(context.public_encrypted,
                                         context.representation)

  def next_batch(rng):
    enc = encrypted_pool[rng.integers(len(encrypted_pool), size=size.batch_size)]
    plain = context.public_plain[
        rng.integers(len(context.public_plain), size=size.batch_size)]
    return {"encrypted": enc, "plain": plain}

  state, history = fitting.fit(
      step_fn, state, next_batch, size.steps, size.batch_size, context.seed,
      mesh, context.checkpoint_dir, desc=f"GAN {context.scheme}",
      progress=context.progress)
  return generator, state[0]["to_plain"], history


def run(context: threat_model.AttackContext, mesh: Optional[Mesh] = None
        ) -> Tuple[np.ndarray, List[Dict[str, float]]]:
  """Trains the GAN and translates the attacked images.

  Args:
    context: the attack context.
    mesh: devices to train and predict on (default: all).

  Returns:
    `(reconstructions, history)`: uint8 `[N, H, W, 3]` and training losses.
  """
  generator, params, history = train(context, mesh)
  attacked = visual_metrics.as_rgb(context.encrypted, context.representation)
  return networks.predict(generator, params, attacked, mesh=mesh), history
