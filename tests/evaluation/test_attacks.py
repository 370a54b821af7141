"""Attacks: exactness on constructed cases, applicability, smoke runs."""

import math

import numpy as np
import pytest

from etcjax import encryption
from etcjax.encryption import schemes
from etcjax.evaluation import attacks
from etcjax.evaluation import visual_metrics
from etcjax.evaluation.attacks import brute_force
from etcjax.evaluation.attacks import fr_attack
from etcjax.evaluation.attacks import gan_attack
from etcjax.evaluation.attacks import itn_attack
from etcjax.evaluation.attacks import jigsaw
from etcjax.evaluation.attacks import priors
from etcjax.evaluation.attacks import threat_model

KEY = bytes(range(32))
TINY = threat_model.TrainingSize(steps=3, batch_size=4, width=4,
                                 learning_rate=1e-3, num_keys=3, levels=2)


def smooth_images(n, h, w, seed=0):
  """Smooth, asymmetric colour images (no two blocks alike)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  out = []
  for _ in range(n):
    f = rng.uniform(0.5, 1.5, 6)
    r = 128 + 90 * np.sin(f[0] * x / w * 2 + f[1] * y / h * 3 + f[2])
    g = 40 + 200 * (x / w) ** 1.5 * (0.5 + 0.5 * y / h)
    b = 128 + 100 * np.cos(f[3] * y / h * 2.5 + f[4] * x / w + f[5])
    out.append(np.stack([r, g, b], -1))
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def context_for(scheme, images, steps=None, public=None, training=TINY):
  plan = encryption.make_plan(KEY, scheme, images.shape[1:], steps=steps)
  encrypted = np.asarray(encryption.apply(plan, images))
  public = images if public is None else public
  return threat_model.AttackContext(
      scheme=scheme, block_size=plan.block_size, steps=steps,
      image_shape=images.shape[1:], encrypted_shape=plan.encrypted_shape,
      representation=plan.representation, encrypted=encrypted,
      public_plain=public,
      public_encrypted=np.asarray(encryption.apply(plan, public)),
      training=training, progress=False), plan


def test_fr_exactly_undoes_negative_positive_on_a_single_block():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 128, (1, 16, 16, 3), dtype=np.uint8)
  for key in (KEY, bytes(32), bytes([7]) * 32):
    plan = encryption.make_plan(key, "etc", (16, 16, 3), steps=("negpos",))
    encrypted = np.asarray(encryption.apply(plan, image))
    np.testing.assert_array_equal(fr_attack.fold(encrypted), image)
  inverted = (np.asarray(encryption.apply(plan, image)) ^ 255)
  np.testing.assert_array_equal(fr_attack.fold(inverted), image)


def test_fr_advanced_restores_pe_up_to_a_global_transform():
  images = smooth_images(3, 32, 32)
  context, _ = context_for("pe", images)
  transforms = priors.photometric_transforms(3, True, True, True)
  decoded = fr_attack.decode_units(context.encrypted, 1, transforms)
  for plain, dec in zip(images, decoded):
    best = max(np.mean(np.all(priors.apply_photometric(dec, t) == plain, -1))
               for t in transforms)
    assert best > 0.75
  # Without the smoothness search, most pixels stay wrong.
  assert np.mean(np.all(fr_attack.fold(context.encrypted) == images, -1)) < 0.5


def _brute_force_pixel_decoding(encrypted, transforms, prior, weight):
  """FR's per-pixel decoding by building and scoring every candidate."""
  n, h, w, c = encrypted.shape
  units = encrypted.reshape(n, h, 1, w, 1, c).transpose(0, 1, 3, 2, 4, 5)
  decoded = np.zeros((n, h, w, 1, 1, c), np.int32)
  decoded[:, 0, 0] = priors.apply_photometric(units[:, 0, 0], transforms[0])
  for k in range(1, h + w - 1):
    rows = np.arange(max(0, k - w + 1), min(h - 1, k) + 1)
    cols = k - rows
    cand = np.stack([priors.apply_photometric(units[:, rows, cols], t)
                     for t in transforms], axis=2).astype(np.int32)
    predictions, valid = fr_attack._pixel_predictions(decoded, rows, cols)  # pylint: disable=protected-access
    errors = np.abs(cand[:, :, :, None, 0, 0]
                    - predictions[:, :, None]).sum(-1)
    cost = ((errors * valid[None, :, None]).sum(-1)
            / valid.sum(-1)[None, :, None])
    cost = cost - weight * prior.colour_log_likelihood(cand).mean((-1, -2))
    best = np.argmin(cost, axis=2)
    decoded[:, rows, cols] = np.take_along_axis(
        cand, best[:, :, None, None, None, None], axis=2)[:, :, 0]
  return decoded.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


@pytest.mark.parametrize("steps", [None, ("negpos",), ("channel",)])
def test_fr_pixel_decoding_equals_scoring_every_candidate(steps):
  images = np.concatenate([smooth_images(4, 16, 16),
                           np.random.default_rng(0).integers(
                               0, 256, (2, 16, 16, 3), np.uint8)])
  prior = priors.ImagePrior.fit(images)
  plan = encryption.make_plan(KEY, "pe", (16, 16, 3), steps=steps)
  encrypted = np.asarray(encryption.apply(plan, images))
  transforms = priors.photometric_transforms(
      3, colour=steps != ("negpos",), inversion=steps != ("channel",),
      per_channel_inversion=True)
  for weight in (0.0, fr_attack.PRIOR_WEIGHT):
    np.testing.assert_array_equal(
        fr_attack.decode_units(encrypted, 1, transforms, prior=prior,
                               prior_weight=weight),
        _brute_force_pixel_decoding(encrypted, transforms, prior, weight))


def test_jigsaw_restores_scrambled_smooth_blocks_exactly():
  images = smooth_images(2, 64, 64, seed=1)
  context, plan = context_for("etc", images, steps=("scramble",))
  assemblies = jigsaw.run(context)
  for assembly, plain in zip(assemblies, images):
    np.testing.assert_array_equal(assembly.image, plain)
  accuracy = jigsaw.score(assemblies, jigsaw.source_blocks(plan), images, 16,
                          [0])
  np.testing.assert_array_equal(accuracy.position, 1.0)
  np.testing.assert_array_equal(accuracy.exact_blocks, 1.0)


def test_jigsaw_with_all_etc_steps_is_right_up_to_a_global_transform():
  images = smooth_images(1, 64, 64, seed=2)
  context, plan = context_for("etc", images)
  symmetries, transforms = jigsaw.variants_of("etc", schemes.ETC_STEPS, 3)
  assembly = jigsaw.solve(context.encrypted[0], 16, symmetries, transforms)
  accuracy = jigsaw.score([assembly], jigsaw.source_blocks(plan), images, 16,
                          symmetries)
  assert accuracy.position_up_to_global[0] == 1.0
  assert accuracy.neighbours[0] == 1.0
  variants = jigsaw.global_variants(assembly, symmetries, transforms, (4, 4))
  assert any(np.array_equal(v.image, images[0]) for v in variants)


def test_source_blocks_of_an_unscrambled_plan_is_the_identity():
  plan = encryption.make_plan(KEY, "etc", (64, 48, 3), steps=("rotate_flip",))
  np.testing.assert_array_equal(jigsaw.source_blocks(plan), np.arange(12))
  plan = encryption.make_plan(KEY, "etc", (64, 48, 3))
  assert sorted(jigsaw.source_blocks(plan)) == list(range(12))


def test_unknown_and_inapplicable_attacks_are_refused_clearly():
  with pytest.raises(ValueError, match="known attacks: .*jigsaw"):
    attacks.get_attack("sudoku")
  with pytest.raises(ValueError, match="'jigsaw' does not apply to scheme 'pe'.*"
                     r"applies to \['etc', 'etc_gray'\]"):
    attacks.check_applicable("jigsaw", "pe")
  with pytest.raises(ValueError, match="unknown scheme"):
    attacks.check_applicable("fr", "rot13")
  images = smooth_images(1, 32, 32)
  context, _ = context_for("le", images)
  with pytest.raises(ValueError, match="'fr_advanced' does not apply"):
    attacks.reconstruct("fr_advanced", context)


def test_brute_force_bits_of_etc_on_cifar_size():
  # 4 blocks: 4! orders, 8 symmetries x 2 inversions x 6 colour orders each.
  expected = math.log2(math.factorial(4)) + 4 * math.log2(8 * 2 * 6)
  assert brute_force.key_space_bits("etc", (32, 32, 3)) == pytest.approx(expected)
  table = brute_force.table(["etc", "pe"], [("cifar10", (32, 32, 3))])
  assert table.column("brute force") == ["FEASIBLE", "infeasible"]
  with pytest.raises(ValueError, match="not a multiple of the block size"):
    brute_force.key_space_bits("etc", (40, 40, 3))


def test_itn_key_pool_encrypts_each_image_with_its_own_key():
  images = smooth_images(3, 32, 32)
  context, _ = context_for("etc", images)
  keys = itn_attack.attacker_keys(0, 3)
  pool = itn_attack.KeyPool(context, keys)
  out = pool.encrypt(images, np.array([2, 0, 1]))
  for i, k in enumerate([2, 0, 1]):
    np.testing.assert_array_equal(
        out[i], encryption.encrypt(images[i:i + 1], keys[k], "etc")[0])


def _learned_smoke(run):
  images = smooth_images(6, 32, 32)
  context, _ = context_for("le", images)
  reconstructions, history = run(context)
  assert reconstructions.shape == images.shape
  assert reconstructions.dtype == np.uint8
  assert len(history) == TINY.steps
  assert np.isfinite(visual_metrics.ssim(images, reconstructions)).all()


def test_itn_attack_smoke():
  _learned_smoke(itn_attack.run)


@pytest.mark.slow  # Compiling the CycleGAN step takes 20-60 s on 2 cores.
def test_gan_attack_smoke():
  _learned_smoke(gan_attack.run)


def test_reconstruct_runs_fr_and_jigsaw_on_grayscale_etc():
  images = smooth_images(2, 32, 32)
  context, _ = context_for("etc_gray", images)
  for name in ("fr", "jigsaw"):
    out, _ = attacks.reconstruct(name, context)
    assert out.shape == images.shape and out.dtype == np.uint8
