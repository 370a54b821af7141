"""Mixup, CutMix and label smoothing: shapes, label mass, exact pasted area."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax.data import mixing

B, H, W, C, K = 8, 16, 16, 3, 5

_jitted_mix = jax.jit(mixing.mix, static_argnames=(
    "mixup_alpha", "cutmix_alpha", "mix_prob", "switch_prob"))


def mix(rng, images, targets, mixup_alpha, cutmix_alpha, mix_prob=1.0,
        switch_prob=0.5):
  # Jitted as in the train step, with every setting passed explicitly so
  # that tests share compilations (Beta sampling compiles slowly).
  return _jitted_mix(rng, images, targets, mixup_alpha=mixup_alpha,
                     cutmix_alpha=cutmix_alpha, mix_prob=mix_prob,
                     switch_prob=switch_prob)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.uniform(0, 255, (B, H, W, C)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, K, B))
  return images, labels


def test_onehot_label_smoothing():
  targets = mixing.onehot(jnp.array([0, 3]), K, label_smoothing=0.1)
  assert targets.shape == (2, K) and targets.dtype == jnp.float32
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(targets[1, 3], 0.9 + 0.1 / K, rtol=1e-6)
  np.testing.assert_allclose(targets[1, 0], 0.1 / K, rtol=1e-6)
  np.testing.assert_array_equal(mixing.onehot(jnp.array([2]), K)[0],
                                np.eye(K)[2])
  with pytest.raises(ValueError, match="label_smoothing"):
    mixing.onehot(jnp.array([0]), K, label_smoothing=1.0)


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 0.0), (0.0, 1.0),
                                                       (0.8, 1.0)])
def test_shapes_and_label_mass(mixup_alpha, cutmix_alpha):
  images, labels = _batch()
  targets = mixing.onehot(labels, K, 0.1)
  for seed in range(10):
    mixed, soft = mix(jax.random.key(seed), images, targets,
                      mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    assert mixed.shape == images.shape and mixed.dtype == images.dtype
    assert soft.shape == (B, K)
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-5)
    assert float(soft.min()) >= 0.0
    assert float(mixed.min()) >= 0.0 and float(mixed.max()) <= 255.0


def test_cutmix_label_weight_is_the_pasted_area():
  # Partner images differ everywhere, so pasted pixels are identifiable.
  images = jnp.broadcast_to(jnp.arange(B, dtype=jnp.float32)[:, None, None, None],
                            (B, H, W, C))
  targets = mixing.onehot(jnp.arange(B) % K, K)
  fractions = set()
  for seed in range(20):
    mixed, soft = mix(jax.random.key(seed), images, targets,
                      mixup_alpha=0.0, cutmix_alpha=1.0)
    pasted = np.asarray(mixed[0, :, :, 0] != images[0, 0, 0, 0]).mean()
    # Every pixel comes from the image itself or its partner (no blending).
    assert set(np.unique(mixed[0])) <= {0.0, float(B - 1)}
    own = float(soft[0, 0])  # label 0's weight: image 0 (class 0) only.
    partner = float(soft[0, (B - 1) % K])
    np.testing.assert_allclose(partner, pasted, atol=1e-6)
    np.testing.assert_allclose(own, 1.0 - pasted, atol=1e-6)
    fractions.add(round(pasted, 4))
  assert len(fractions) > 5  # boxes really vary


def test_mixup_weights_images_and_labels_alike():
  images, labels = _batch()
  targets = mixing.onehot(labels, K)
  mixed, soft = mix(jax.random.key(1), images, targets, mixup_alpha=0.8,
                   cutmix_alpha=0.0)
  # Solve the per-batch lambda from the images and check the labels use it.
  lam = float(jnp.mean((mixed[0] - images[-1]) / (images[0] - images[-1])))
  np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1],
                             rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(soft, lam * targets + (1 - lam) * targets[::-1],
                             atol=1e-4)


def test_mixup_of_identical_images_is_identity():
  images = jnp.broadcast_to(_batch()[0][:1], (B, H, W, C))
  targets = mixing.onehot(jnp.zeros(B, jnp.int32), K)
  for seed in range(5):
    mixed, soft = mix(jax.random.key(seed), images, targets, mixup_alpha=0.8,
                      cutmix_alpha=1.0)
    np.testing.assert_allclose(mixed, images, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(soft, targets, atol=1e-6)


def test_deterministic_and_off_switches():
  images, labels = _batch()
  targets = mixing.onehot(labels, K)
  a = mix(jax.random.key(7), images, targets, mixup_alpha=0.8, cutmix_alpha=1.0)
  b = mix(jax.random.key(7), images, targets, mixup_alpha=0.8, cutmix_alpha=1.0)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  for kwargs in ({"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
                 {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 0.0}):
    mixed, soft = mix(jax.random.key(3), images, targets, **kwargs)
    np.testing.assert_array_equal(mixed, images)
    np.testing.assert_array_equal(soft, targets)
  with pytest.raises(ValueError, match="mix_prob"):
    mixing.mix(jax.random.key(0), images, targets, 0.8, 0.0, mix_prob=2.0)
  with pytest.raises(ValueError, match="same B"):
    mixing.mix(jax.random.key(0), images, targets[:2], 0.8, 0.0)


def test_switch_prob_chooses_between_methods():
  images, labels = _batch()
  targets = mixing.onehot(labels, K)
  blended = []
  for seed in range(40):
    mixed, _ = mix(jax.random.key(seed), images, targets, mixup_alpha=0.8,
                   cutmix_alpha=1.0, switch_prob=0.5)
    own = np.isclose(mixed, images).all(-1)
    partner = np.isclose(mixed, images[::-1]).all(-1)
    blended.append(not (own | partner).all())  # mixup blends pixels
  assert 5 < sum(blended) < 35
