"""ITN-Attack: an inverse transformation network trained on other keys.

The adversary knows the algorithm, so it can encrypt plain images of the
data distribution itself, with keys of its own. It trains a network
(`networks.UNet`) to map (encrypted, plain) pairs made with many random
keys back to the plain images, then applies it to images encrypted with the
secret key. It succeeds where the scheme leaves structure that does not
depend on the key (e.g. LE's common-key in-block transform of 4x4 blocks
still keeps each block's content in place); it fails where key-dependent
choices look alike for every key (EtC's block scrambling).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from etcjax import encryption
from etcjax.evaluation import visual_metrics
from etcjax.evaluation.attacks import fitting
from etcjax.evaluation.attacks import networks
from etcjax.evaluation.attacks import threat_model


def attacker_keys(seed: int, count: int) -> List[bytes]:
  """The adversary's own keys (not secrets: derived from a seed).

  Args:
    seed: seed of the attack.
    count: number of keys.

  Returns:
    `count` distinct 32-byte keys.
  """
  return [hashlib.sha256(f"etcjax attacker key {seed}/{i}".encode()).digest()
          for i in range(count)]


class KeyPool:
  """Encrypts batches with a randomly chosen attacker key per image."""

  def __init__(self, context: threat_model.AttackContext, keys: List[bytes]):
    # PE with per-image keys is PE with a different key per image: the
    # attacker's keys already differ per image.
    scheme = "pe" if context.scheme == "pe_per_image" else context.scheme
    built = [encryption.make_plan(key, scheme, context.image_shape,
                                  context.block_size, context.steps)
             for key in keys]
    self._template = built[0]
    self._gather = np.stack([p.gather for p in built])
    self._xor = np.stack([p.xor for p in built])
    self._ungather = np.stack([p.ungather for p in built])
    self._representation = context.representation

  def encrypt(self, images: np.ndarray, key_index: np.ndarray) -> np.ndarray:
    """Encrypts image i with key `key_index[i]`; returns RGB views.

    Args:
      images: uint8 `[n, H, W, 3]`.
      key_index: int `[n]`, indices into the pool.

    Returns:
      uint8 `[n, H, W, 3]`: the encrypted images as `visual_metrics.as_rgb`
      shows them.
    """
    plan = dataclasses.replace(
        self._template, gather=self._gather[key_index],
        xor=self._xor[key_index], ungather=self._ungather[key_index],
        fingerprint="attacker-key-pool")
    encrypted = np.asarray(encryption.apply(plan, images))
    return visual_metrics.as_rgb(encrypted, self._representation)


def train_step(state, batch, *, module: networks.UNet,
               tx: optax.GradientTransformation):
  """One optimizer step of the inverse transformation network (L1).

  Args:
    state: `(params, opt_state)`.
    batch: {'encrypted', 'plain'}: uint8 `[B, H, W, 3]` pairs (encrypted
      with attacker keys, shown as RGB).
    module: the network.
    tx: its optimizer.

  Returns:
    `(state, metrics)`; metrics {'l1'}: mean absolute error in [-1, 1] units.
  """
  params, opt_state = state

  def loss_fn(p):
    out = module.apply({"params": p}, networks.to_signed(batch["encrypted"]))
    return jnp.mean(jnp.abs(out - networks.to_signed(batch["plain"])))

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return (optax.apply_updates(params, updates), opt_state), {"l1": loss}


@functools.lru_cache(maxsize=8)
def trainer(module: networks.UNet, learning_rate: float):
  """`(tx, step_fn)`: the optimizer and the bound `train_step`.

  Cached, so the same networks and rate share one step function (and one
  compilation in `fitting.fit`).
  """
  tx = optax.adam(learning_rate)
  return tx, functools.partial(train_step, module=module, tx=tx)


def train(context: threat_model.AttackContext, mesh: Optional[Mesh] = None
          ) -> Tuple[networks.UNet, dict, List[float]]:
  """Trains the inverse transformation network.

  Args:
    context: the attack context (its `training` size and `public_plain`
      images are used; never the secret key).
    mesh: devices to train on (default: all; see `fitting.fit`).

  Returns:
    `(module, params, losses)`: the network, its parameters and the L1
    training loss of every step.
  """
  size = context.training
  pool = KeyPool(context, attacker_keys(context.seed, size.num_keys))
  module = networks.generator(size, context.image_shape)
  h, w, _ = context.image_shape
  params = module.init(jax.random.key(context.seed),
                       jnp.zeros((1, h, w, 3), jnp.float32))["params"]
  tx, step_fn = trainer(module, size.learning_rate)
  plain_pool = context.public_plain

  def next_batch(rng):
    plain = plain_pool[rng.integers(len(plain_pool), size=size.batch_size)]
    keys = rng.integers(size.num_keys, size=size.batch_size)
    return {"encrypted": pool.encrypt(plain, keys), "plain": plain}

  (params, _), history = fitting.fit(
      step_fn, (params, tx.init(params)), next_batch, size.steps,
      size.batch_size, context.seed, mesh, context.checkpoint_dir,
      desc=f"ITN {context.scheme}", progress=context.progress)
  return module, params, [h["l1"] for h in history]


def run(context: threat_model.AttackContext, mesh: Optional[Mesh] = None
        ) -> Tuple[np.ndarray, List[float]]:
  """Trains the ITN and applies it to the attacked images.

  Args:
    context: the attack context.
    mesh: devices to train and predict on (default: all).

  Returns:
    `(reconstructions, losses)`: uint8 `[N, H, W, 3]` and the training
    losses.
  """
  module, params, losses = train(context, mesh)
  attacked = visual_metrics.as_rgb(context.encrypted, context.representation)
  return networks.predict(module, params, attacked, mesh=mesh), losses
