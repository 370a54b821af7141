"""The other schemes: grayscale-based EtC, common-key block-wise, LE, ELE, PE.

Each step is probed from outside (encrypting chosen images and reading where
values go), so a step that duplicates, drops or never varies a value fails.
"""

import collections

import numpy as np
import pytest

import etc_reference as ref
from etcjax import encryption
from etcjax.encryption import plans


def _random(shape, seed):
  return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


# --------------------------------------------------------------------------
# Grayscale-based EtC.


def _all_colours():
  codes = np.arange(2**24, dtype=np.uint32).reshape(256, 256, 256)
  return np.stack([codes >> 16, (codes >> 8) & 255, codes & 255],
                  -1).astype(np.uint8)


def _check_ycbcr(rgb):
  ycc = np.asarray(plans.rgb_to_ycbcr(rgb))
  np.testing.assert_array_equal(ycc, ref.ycbcr_fixed_point(rgb))
  # And within rounding of the exact real-valued transform (T.871).
  x = rgb.astype(np.float64)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  exact = np.stack([
      0.299 * r + 0.587 * g + 0.114 * b, 128 - 0.168736 * r - 0.331264 * g +
      0.5 * b, 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
  ], -1)
  assert np.abs(ycc - exact).max() <= 0.502


def test_ycbcr_matches_independent_fixed_point_reference():
  extremes = np.array([0, 1, 2, 127, 128, 129, 253, 254, 255], np.uint8)
  corners = np.stack(np.meshgrid(extremes, extremes, extremes),
                     -1).reshape(1, -1, 3)
  _check_ycbcr(corners)
  _check_ycbcr(_random((16, 65536, 3), seed=0))


@pytest.mark.slow
def test_ycbcr_matches_independent_fixed_point_reference_on_all_colours():
  _check_ycbcr(_all_colours())


def test_etc_gray_blocks_are_transforms_of_the_side_by_side_ycbcr_image():
  plain = _random((48, 64, 3), seed=1)
  gray = ref.gray_side_by_side(plain)
  found = []
  for k in range(6):
    enc = encryption.encrypt(plain[None], ref.key_for(f"gray/{k}"),
                             "etc_gray")[0]
    assert enc.shape == (48, 192, 1)
    ids = ref.identify_blocks(gray, enc, 8)
    assert sorted(f["source"] for f in ids) == list(range(6 * 24))
    found += ids
  counts = collections.Counter(f["symmetry"] for f in found)
  assert sorted(counts) == list(range(8)), counts
  assert 0.4 < np.mean([f["negpos"] for f in found]) < 0.6


def test_etc_gray_rgb_round_trip_error_is_at_most_one_on_all_colours():
  # The scheme permutes the YCbCr image exactly; only the colour conversion
  # rounds. Measured over all 2^24 colours: max error 1, on 76% of colours.
  rgb = _all_colours()
  key = ref.key_for("gray-all-colours")
  back = encryption.decrypt(encryption.encrypt(rgb, key, "etc_gray"), key,
                            "etc_gray")
  error = np.abs(back.astype(np.int16) - rgb).max(axis=-1)
  assert error.max() == 1
  assert 0.7 < (error == 1).mean() < 0.8


# --------------------------------------------------------------------------
# Block-wise scheme with a key common to all blocks.


def test_block_common_applies_one_transform_to_every_block():
  key = ref.key_for("common")
  block = _random((16, 16, 3), seed=2)
  tiled = np.tile(block, (3, 4, 1))[None]
  enc = encryption.encrypt(tiled, key, "block_common")[0]
  blocks = ref.to_blocks(enc, 16)
  assert (blocks == blocks[0]).all()
  assert not np.array_equal(blocks[0], block)


def test_block_common_is_a_block_permutation_of_value_permuted_blocks():
  key = ref.key_for("common")
  plain = _random((48, 64, 3), seed=3)
  zero = encryption.encrypt(np.zeros((1, 48, 64, 3), np.uint8), key,
                            "block_common")[0]
  mask = ref.to_blocks(zero, 16)
  assert (mask == mask[0]).all() and set(np.unique(mask)) == {0, 255}
  enc = ref.to_blocks(
      encryption.encrypt(plain[None], key, "block_common")[0], 16) ^ mask
  signature = lambda b: tuple(sorted(map(tuple, b.reshape(-1, 3).tolist())))
  # Undo the common colour order, then match pixel multisets block by block.
  sources = {}
  for order in ref.CHANNEL_ORDERS:
    candidates = {
        signature(b[..., list(order)]): i
        for i, b in enumerate(ref.to_blocks(plain, 16))
    }
    matches = [candidates.get(signature(b)) for b in enc]
    if None not in matches:
      sources[order] = matches
  assert len(sources) == 1, "no single colour order explains every block"
  matches = next(iter(sources.values()))
  assert sorted(matches) == list(range(12)) and matches != list(range(12))


def test_block_common_pixel_shuffle_alone_is_a_pixel_permutation():
  plain = _random((32, 32, 3), seed=4)
  enc = encryption.encrypt(plain[None],
                           ref.key_for("common"),
                           "block_common",
                           steps=("pixel_shuffle",))[0]
  for a, b in zip(ref.to_blocks(plain, 16), ref.to_blocks(enc, 16)):
    assert sorted(map(tuple,
                      a.reshape(-1, 3).tolist())) == sorted(
                          map(tuple,
                              b.reshape(-1, 3).tolist()))
    assert not np.array_equal(a, b)


# --------------------------------------------------------------------------
# LE and ELE: probe where every 4-bit value goes.


def _nibbles(images):
  """uint8 `[..., 3]` -> `[..., 6]` 4-bit values (hi, lo per channel)."""
  pairs = np.stack([images >> 4, images & 15], axis=-1)
  return pairs.reshape(images.shape[:-1] + (6,))


def _from_nibbles(nibbles):
  pairs = nibbles.reshape(nibbles.shape[:-1] + (3, 2))
  return ((pairs[..., 0] << 4) | pairs[..., 1]).astype(np.uint8)


def _encrypt_nibbles(nibbles, key, scheme, steps):
  """Encrypts images given as `[N, H, W, 6]` nibbles; returns nibbles."""
  images = _from_nibbles(nibbles)
  return _nibbles(encryption.encrypt(images, key, scheme, steps=steps))


def _nibble_maps(scheme, key, h=16, w=16, b=4, steps=None):
  """Where each 4-bit value of a block goes, probed one position at a time.

  Returns:
    mask: `[H, W, 6]`, the encryption of the all-zero image as nibbles.
    dest: `[b*b*6, nb]`, for in-block position q (probed in every block at
      once), the in-block position it lands on in each output block.
    blocks: `[nb]`, for each input block (probed alone, all 15s), the output
      block it lands in.
  """
  nb, local = (h // b) * (w // b), b * b * 6
  zero = np.zeros((1, h, w, 3), np.uint8)
  mask = _encrypt_nibbles(_nibbles(zero), key, scheme, steps)[0]
  probes = np.zeros((local, h // b, b, w // b, b * 6), np.uint8)
  for q in range(local):
    probes[q, :, q // (b * 6), :, q % (b * 6)] = 15
  out = _encrypt_nibbles(probes.reshape(local, h, w, 6), key, scheme,
                         steps) ^ mask
  blocks_out = out.reshape(local, h // b, b, w // b, b * 6).swapaxes(2, 3)
  hits = blocks_out.reshape(local, nb, local)
  assert ((hits == 0) | (hits == 15)).all()
  assert (hits.astype(bool).sum(-1) == 1).all()  # one value lands per block
  dest = hits.argmax(-1)
  whole = np.zeros((nb, h // b, b, w // b, b * 6), np.uint8)
  for i in range(nb):
    whole[i, i // (w // b), :, i % (w // b), :] = 15
  out = _encrypt_nibbles(whole.reshape(nb, h, w, 6), key, scheme,
                         steps) ^ mask
  full = out.reshape(nb, h // b, b, w // b, b * 6).swapaxes(2, 3)
  full = full.reshape(nb, nb, -1)
  assert ((full == 15).all(-1).sum(-1) == 1).all()
  return mask, dest, (full == 15).all(-1).argmax(-1)


def _check_permutations(dest):
  for column in dest.T:
    assert sorted(column) == list(range(len(column)))


def test_le_shuffle_and_inversion_are_common_to_all_blocks():
  mask, dest, blocks = _nibble_maps("le", ref.key_for("le"))
  _check_permutations(dest)
  assert (dest == dest[:, :1]).all()  # same shuffle in every block
  np.testing.assert_array_equal(blocks, np.arange(16))  # no scrambling
  # Values are split into 4-bit halves: upper and lower halves mix.
  crossed = (np.arange(96) % 2) != (dest[:, 0] % 2)
  assert 0.3 < crossed.mean() < 0.7
  # Inversion is v ^ 15 on 4-bit values, with the same mask in every block.
  mask_blocks = mask.reshape(4, 4, 4, 24).swapaxes(1, 2).reshape(16, -1)
  assert set(np.unique(mask)) == {0, 15}
  assert (mask_blocks == mask_blocks[0]).all()
  assert 0.3 < (mask_blocks[0] == 15).mean() < 0.7


def test_ele_uses_a_different_key_per_block_and_scrambles_blocks():
  mask, dest, blocks = _nibble_maps("ele", ref.key_for("ele"))
  _check_permutations(dest)
  assert len({tuple(column) for column in dest.T}) == 16  # all blocks differ
  assert sorted(blocks) == list(range(16)) and list(blocks) != list(range(16))
  mask_blocks = mask.reshape(4, 4, 4, 24).swapaxes(1, 2).reshape(16, -1)
  assert set(np.unique(mask)) == {0, 15}
  assert len({m.tobytes() for m in mask_blocks}) == 16


@pytest.mark.parametrize("scheme", ["le", "ele"])
def test_nibble_steps_alone(scheme):
  key = ref.key_for(scheme)
  plain = _random((16, 16, 3), seed=5)
  shuffled = encryption.encrypt(plain[None],
                                key,
                                scheme,
                                steps=("value_shuffle",))[0]
  for a, b in zip(ref.to_blocks(_nibbles(plain), 4),
                  ref.to_blocks(_nibbles(shuffled), 4)):
    np.testing.assert_array_equal(np.sort(a, None), np.sort(b, None))
  inverted = encryption.encrypt(plain[None], key, scheme, steps=("negpos",))[0]
  flips = _nibbles(plain) ^ _nibbles(inverted)
  assert set(np.unique(flips)) == {0, 15}


# --------------------------------------------------------------------------
# PE: pixel-wise negative-positive and colour shuffle.


def test_pe_colour_shuffle_is_per_pixel_and_never_duplicates():
  lows = np.array([0, 88, 175])
  plain = (lows + np.random.default_rng(6).integers(0, 81, (32, 32, 3))).astype(
      np.uint8)
  enc = encryption.encrypt(plain[None],
                           ref.key_for("pe"),
                           "pe",
                           steps=("channel",))[0]
  ranges = np.searchsorted(np.array([84, 171]), enc)
  np.testing.assert_array_equal(np.sort(ranges, -1),
                                np.broadcast_to([0, 1, 2], enc.shape))
  # Each pixel keeps its own values, in one of the 6 orders, all used.
  orders = collections.Counter(map(tuple, ranges.reshape(-1, 3).tolist()))
  assert len(orders) == 6 and min(orders.values()) > 100
  np.testing.assert_array_equal(np.sort(enc, -1), np.sort(plain, -1))


def test_pe_negative_positive_is_per_value():
  plain = _random((32, 32, 3), seed=7)
  enc = encryption.encrypt(plain[None],
                           ref.key_for("pe"),
                           "pe",
                           steps=("negpos",))[0]
  flipped = (enc ^ plain)
  assert set(np.unique(flipped)) == {0, 255}
  assert 0.45 < (flipped == 255).mean() < 0.55
  # Channels of one pixel are inverted independently.
  per_pixel = (flipped == 255).sum(-1)
  assert set(np.unique(per_pixel)) == {0, 1, 2, 3}


def test_pe_per_image_keys_differ_per_image_id_and_repeat_per_id():
  key = ref.key_for("pe")
  plain = np.repeat(_random((1, 16, 16, 3), seed=8), 3, axis=0)
  ids = np.array([3, 4, 10**12])
  enc = encryption.encrypt(plain, key, "pe_per_image", image_ids=ids)
  # One batch may not repeat an id (refused); the same id in another call
  # gives the same per-image key.
  again = encryption.encrypt(plain[:1], key, "pe_per_image", image_ids=[3])
  np.testing.assert_array_equal(enc[0], again[0])
  assert not np.array_equal(enc[0], enc[1]) and not np.array_equal(
      enc[1], enc[2])
  np.testing.assert_array_equal(
      encryption.decrypt(enc, key, "pe_per_image", image_ids=ids), plain)
  wrong = encryption.decrypt(enc, key, "pe_per_image", image_ids=ids + 1)
  assert not np.array_equal(wrong, plain)
