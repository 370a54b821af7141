"""The block-wise (and pixel-wise) image encryption schemes, as plan builders.

Each builder turns (key, image shape, block size) into a `plans.Plan`. All
choices come from `keys.KeyStream` under a label `"<scheme>/<step>"`.

Schemes (name: reference; default block size):

- `etc`: EtC, Kurihara et al. 2015, as used by MaungMaung & Kiya 2022;
  B=16. Per block: (1) block scrambling, (2) one of the 8 rotations/flips of
  the square, (3) negative-positive p ^ 255 with probability 1/2, (4) one of
  the 6 colour channel orders.
- `etc_gray`: grayscale-based EtC, Chuman et al. 2019; B=8. The image's Y,
  Cb and Cr planes are placed side by side as one grayscale image
  `[H, 3W, 1]` whose 3x as many blocks are scrambled, rotated/flipped and
  negative-positive transformed (no colour shuffle: there is one channel).
  The RGB <-> YCbCr conversion rounds, so decryption is exact on the
  grayscale image and within a few levels on RGB.
- `block_common`: block-wise transformation with a key common to all blocks
  (AprilPyone & Kiya 2021); B=16. Block scrambling, then the same in-block
  pixel shuffle, negative-positive mask (per value) and colour order in
  every block. Everything but the scrambling is absorbed exactly by a
  patch-embedding layer with patch size B; see `etcjax.models` adaptation.
- `le`: learnable image encryption, Tanaka 2018; M=4. Every 8-bit value is
  split into its upper and lower 4 bits (6 channels); within each 4x4 block
  the 96 values are shuffled and negative-positive transformed (v ^ 15) by a
  key common to all blocks; then reassembled into 3 channels.
- `ele`: extended learnable encryption, Madono et al. 2020; M=4. LE with a
  different key per block, plus block scrambling.
- `pe`: pixel-wise encryption, Sirichotedumrong et al. 2019; per pixel and
  channel negative-positive, per pixel colour shuffle; one key for all
  images.
- `pe_per_image`: PE with a different key for every image, derived from
  the key and the image's integer id (pass `image_ids` to `make_plan`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from etcjax import errors
from etcjax.encryption import keys as keys_lib
from etcjax.encryption import plans

# The 6 orders of three colour channels and the 8 symmetries of a square.
CHANNEL_ORDERS = tuple(itertools.permutations(range(3)))
NUM_SQUARE_TRANSFORMS = 8


def square_transform(block: np.ndarray, t: int) -> np.ndarray:
  """Applies one of the 8 symmetries of the square to a block.

  Args:
    block: `[B, B, ...]` array of any dtype.
    t: the symmetry in [0, 8): t % 4 counter-clockwise quarter turns, then a
      horizontal flip if t >= 4; t = 0 is the identity, and the 8 values give
      the 8 distinct symmetries.

  Returns:
    The transformed block, same shape and dtype.
  """
  out = np.rot90(block, t % 4, axes=(0, 1))
  return out[:, ::-1] if t >= 4 else out


class UnknownSchemeError(errors.UserError, ValueError):
  """A scheme name that is not in `SCHEMES`."""


class SchemeParameterError(errors.UserError, ValueError):
  """Parameters a scheme cannot take: block size, image shape, steps."""


@dataclasses.dataclass(frozen=True)
class Scheme:
  """A registered scheme.

  Every `build_<scheme>` function has the signature of `build`: it takes the
  32-byte key, `(H, W, C)`, the block size, the steps to apply (None: all)
  and per-image ids (`pe_per_image` only; None otherwise), and returns the
  scheme's `plans.Plan`.

  Attributes:
    name: registry name.
    build: `(key, image_shape, block_size, steps, image_ids) -> Plan`.
    default_block_size: block side used when none is given.
    steps: the steps that can be switched on and off (all on by default).
    representation: one of `plans.REPRESENTATIONS`.
    key_space_bits: `(image_shape, block_size) -> float`, log2 of the number
      of distinct keys' worth of transforms (brute-force search space).
    jpeg_compliant: whether the scheme is designed to survive JPEG (block
      boundaries aligned with JPEG's blocks); the baselines are not.
    description: one line for listings and reports.
  """

  name: str
  build: Callable[..., plans.Plan]
  default_block_size: int
  steps: Tuple[str, ...]
  representation: str
  key_space_bits: Callable[[Tuple[int, int, int], int], float]
  jpeg_compliant: bool
  description: str


SCHEMES: Dict[str, Scheme] = {}


def _register(scheme: Scheme) -> Scheme:
  SCHEMES[scheme.name] = scheme
  return scheme


# --------------------------------------------------------------------------
# Block geometry shared by the builders.


def _block_indices(h: int, w: int, c: int, b: int) -> np.ndarray:
  """Flat indices of an `[h, w, c]` array grouped by block: `[nb, b*b*c]`.

  Blocks are in raster order; within a block, values are in `[b, b, c]`
  row-major order.
  """
  idx = np.arange(h * w * c).reshape(h // b, b, w // b, b, c)
  return idx.transpose(0, 2, 1, 3, 4).reshape(-1, b * b * c)


def _assemble(blocks: np.ndarray, h: int, w: int, c: int, b: int) -> np.ndarray:
  """Inverse layout of `_block_indices`: `[nb, b*b*c]` -> flat `[h*w*c]`."""
  out = blocks.reshape(h // b, w // b, b, b, c).transpose(0, 2, 1, 3, 4)
  return out.reshape(-1)


def _blockwise_plan(rep_shape, b, block_order, local_maps, masks, **meta):
  """Composes block scrambling with per-block in-block permutations and masks.

  Args:
    rep_shape: `(h, w, c)` of the representation being permuted.
    b: block side.
    block_order: int `[nb]`, source block of every output block.
    local_maps: int `[nb, b*b*c]`, for every output block, the source
      position within its source block of every output value.
    masks: uint8 `[nb, b*b*c]`, XOR mask of every output value.
    **meta: the remaining `Plan` fields.
  """
  h, w, c = rep_shape
  source = _block_indices(h, w, c, b)[block_order]
  gather = np.take_along_axis(source, local_maps, axis=1)
  return plans.make(_assemble(gather, h, w, c, b),
                    _assemble(masks, h, w, c, b), block_size=b, **meta)


def _local_symmetry_maps(b: int, c: int) -> np.ndarray:
  """In-block maps of the 8 square symmetries x 6 colour orders: `[8, 6, b*b*c]`."""
  local = np.arange(b * b * c).reshape(b, b, c)
  if c != 3:
    return np.stack([square_transform(local, t).reshape(1, -1)
                     for t in range(NUM_SQUARE_TRANSFORMS)])
  return np.stack([
      np.stack([square_transform(local, t)[..., list(order)].reshape(-1)
                for order in CHANNEL_ORDERS])
      for t in range(NUM_SQUARE_TRANSFORMS)])


def check_geometry(scheme: str, image_shape, block_size: int,
                   channels: Optional[int] = 3) -> Tuple[int, int, int]:
  """Validates an image shape for a scheme and block size.

  Args:
    scheme: the scheme's name, for error messages.
    image_shape: `(H, W, C)` of plain images.
    block_size: block side in pixels.
    channels: the number of channels the scheme needs (None: any).

  Returns:
    `(H, W, C)` as Python ints.

  Raises:
    ValueError: a malformed shape or block size, the wrong number of
      channels, or H or W not a multiple of the block size.
  """
  image_shape = tuple(image_shape)
  if len(image_shape) != 3 or not all(
      isinstance(d, (int, np.integer)) and not isinstance(d, bool)
      for d in image_shape):
    raise SchemeParameterError(
        f"image_shape must be three integers (H, W, C), got {image_shape}")
  h, w, c = (int(d) for d in image_shape)
  if (not isinstance(block_size, (int, np.integer))
      or isinstance(block_size, bool) or block_size < 1):
    raise SchemeParameterError(
        f"block_size must be a positive integer, got {block_size!r}")
  if channels is not None and c != channels:
    raise SchemeParameterError(
        f"scheme {scheme!r} needs {channels}-channel images, got C = {c}")
  if h < 1 or w < 1 or h % block_size or w % block_size:
    raise SchemeParameterError(
        f"image size {h}x{w} is not a multiple of the block size {block_size}"
        f" of scheme {scheme!r}; resize or crop images to a multiple of "
        f"{block_size} (e.g. {max(block_size, h // block_size * block_size)}x"
        f"{max(block_size, w // block_size * block_size)})")
  return h, w, c


def _log2_factorial(n: int) -> float:
  return math.lgamma(n + 1) / math.log(2)


def _stream(key, scheme, step):
  return keys_lib.KeyStream(key, f"{scheme}/{step}")


class InvalidStepsError(errors.UserError, ValueError):
  """`steps` names no step, or steps the scheme does not have."""


class DuplicateImageIdsError(errors.UserError, ValueError):
  """'pe_per_image' got an image id twice (two images, one key)."""


# Passed as `steps` by `representation_plan` only: a plan that applies no
# step, which users cannot ask for by accident with steps=[].
_NO_STEPS = object()


def _check_steps(scheme: str, steps, known: Tuple[str, ...]) -> frozenset:
  if steps is _NO_STEPS:
    return frozenset()
  if steps is not None and not isinstance(steps, str) and not len(steps):
    # An empty selection would return the plain images: never silently.
    raise InvalidStepsError(
        f"steps is empty, so scheme {scheme!r} would not encrypt at all; "
        f"pass None for all its steps or name some of {list(known)}")
  if isinstance(steps, str):
    raise TypeError(
        f"steps must be a sequence of step names, got the string {steps!r}; "
        f"write steps=({steps!r},)")
  steps = frozenset(known if steps is None else steps)
  unknown = steps - set(known)
  if unknown:
    raise InvalidStepsError(
        f"unknown steps {sorted(unknown)} for scheme {scheme!r}; its steps "
        f"are {list(known)}")
  return steps


# --------------------------------------------------------------------------
# EtC and grayscale-based EtC.

ETC_STEPS = ("scramble", "rotate_flip", "negpos", "channel")


def etc_choices(key, name, nb, steps=ETC_STEPS):
  """Per-block choices of EtC (or its grayscale variant), derived from a key.

  Args:
    key: the secret key (32 bytes).
    name: the scheme, "etc" or "etc_gray" (part of every derivation label).
    nb: number of blocks.
    steps: the steps that are on; the others get identity choices.

  Returns:
    `(order, symmetry, negpos, channels)`, each `[nb]`: int64 source block of
    every output block, int64 symmetry in [0, 8) (see `square_transform`),
    bool negative-positive flag, int64 index into `CHANNEL_ORDERS`.
  """
  order = (_stream(key, name, "scramble").permutation(nb)
           if "scramble" in steps else np.arange(nb))
  sym = (_stream(key, name, "rotate_flip").integers(NUM_SQUARE_TRANSFORMS, nb)
         if "rotate_flip" in steps else np.zeros(nb, np.int64))
  neg = (_stream(key, name, "negpos").bits(nb)
         if "negpos" in steps else np.zeros(nb, bool))
  col = (_stream(key, name, "channel").integers(len(CHANNEL_ORDERS), nb)
         if "channel" in steps else np.zeros(nb, np.int64))
  return order, sym, neg, col


def build_etc(key, image_shape, block_size, steps=None, image_ids=None):
  """EtC plan (see module docstring)."""
  del image_ids
  steps = _check_steps("etc", steps, ETC_STEPS)
  h, w, c = check_geometry("etc", image_shape, block_size)
  nb = (h // block_size) * (w // block_size)
  order, sym, neg, col = etc_choices(key, "etc", nb, steps)
  local_maps = _local_symmetry_maps(block_size, c)[sym, col]
  masks = np.repeat((neg * 255).astype(np.uint8)[:, None],
                    block_size * block_size * c, axis=1)
  return _blockwise_plan(
      (h, w, c), block_size, order, local_maps, masks, scheme="etc",
      image_shape=(h, w, c), encrypted_shape=(h, w, c),
      representation=plans.PIXELS, fingerprint=keys_lib.fingerprint(key))


def _etc_bits(image_shape, b):
  h, w, _ = image_shape
  nb = (h // b) * (w // b)
  return _log2_factorial(nb) + nb * (3 + 1 + math.log2(6))


ETC_GRAY_STEPS = ("scramble", "rotate_flip", "negpos")


def build_etc_gray(key, image_shape, block_size, steps=None, image_ids=None):
  """Grayscale-based EtC plan (see module docstring)."""
  del image_ids
  steps = _check_steps("etc_gray", steps, ETC_GRAY_STEPS)
  h, w, c = check_geometry("etc_gray", image_shape, block_size)
  rep = (h, 3 * w, 1)
  nb = (h // block_size) * (3 * w // block_size)
  order, sym, neg, _ = etc_choices(key, "etc_gray", nb, steps)
  local_maps = _local_symmetry_maps(block_size, 1)[sym, 0]
  masks = np.repeat((neg * 255).astype(np.uint8)[:, None],
                    block_size * block_size, axis=1)
  return _blockwise_plan(
      rep, block_size, order, local_maps, masks, scheme="etc_gray",
      image_shape=(h, w, c), encrypted_shape=rep,
      representation=plans.YCBCR_GRAY, fingerprint=keys_lib.fingerprint(key))


def _etc_gray_bits(image_shape, b):
  h, w, _ = image_shape
  nb = (h // b) * (3 * w // b)
  return _log2_factorial(nb) + nb * (3 + 1)


# --------------------------------------------------------------------------
# Block-wise scheme with a key common to all blocks.

BLOCK_COMMON_STEPS = ("scramble", "pixel_shuffle", "negpos", "channel")


def build_block_common(key, image_shape, block_size, steps=None,
                       image_ids=None):
  """Common-key block-wise plan (see module docstring)."""
  del image_ids
  name = "block_common"
  steps = _check_steps(name, steps, BLOCK_COMMON_STEPS)
  h, w, c = check_geometry(name, image_shape, block_size)
  b = block_size
  nb = (h // b) * (w // b)
  order = (_stream(key, name, "scramble").permutation(nb)
           if "scramble" in steps else np.arange(nb))
  pixels = (_stream(key, name, "pixel_shuffle").permutation(b * b)
            if "pixel_shuffle" in steps else np.arange(b * b))
  colours = (CHANNEL_ORDERS[int(_stream(key, name, "channel").integers(6, 1)[0])]
             if "channel" in steps else (0, 1, 2))
  local = np.arange(b * b * c).reshape(b * b, c)[pixels][:, list(colours)]
  mask = (_stream(key, name, "negpos").bits(b * b * c).astype(np.uint8) * 255
          if "negpos" in steps else np.zeros(b * b * c, np.uint8))
  return _blockwise_plan(
      (h, w, c), b, order, np.broadcast_to(local.reshape(1, -1), (nb, b * b * c)),
      np.broadcast_to(mask, (nb, b * b * c)), scheme=name,
      image_shape=(h, w, c), encrypted_shape=(h, w, c),
      representation=plans.PIXELS, fingerprint=keys_lib.fingerprint(key))


def _block_common_bits(image_shape, b):
  h, w, c = image_shape
  nb = (h // b) * (w // b)
  return _log2_factorial(nb) + _log2_factorial(b * b) + b * b * c + math.log2(6)


# --------------------------------------------------------------------------
# LE and ELE: 4-bit split into 6 channels, in-block value shuffle and v ^ 15.

LE_STEPS = ("value_shuffle", "negpos")
ELE_STEPS = ("scramble", "value_shuffle", "negpos")


def _nibble_plan(key, name, image_shape, block_size, steps, per_block,
                 scramble):
  h, w, c = check_geometry(name, image_shape, block_size)
  b = block_size
  rep = (h, w, 2 * c)
  nb = (h // b) * (w // b)
  n_local = b * b * 2 * c
  count = nb if per_block else 1
  if "value_shuffle" in steps:
    shuffle = _stream(key, name, "value_shuffle")
    local_maps = np.stack([shuffle.permutation(n_local) for _ in range(count)])
  else:
    local_maps = np.broadcast_to(np.arange(n_local), (count, n_local))
  masks = (_stream(key, name, "negpos").bits(count * n_local).reshape(
      count, n_local).astype(np.uint8) * 15
           if "negpos" in steps else np.zeros((count, n_local), np.uint8))
  order = (_stream(key, name, "scramble").permutation(nb)
           if scramble else np.arange(nb))
  return _blockwise_plan(
      rep, b, order, np.broadcast_to(local_maps, (nb, n_local)),
      np.broadcast_to(masks, (nb, n_local)), scheme=name,
      image_shape=(h, w, c), encrypted_shape=(h, w, c),
      representation=plans.NIBBLES, fingerprint=keys_lib.fingerprint(key))


def build_le(key, image_shape, block_size, steps=None, image_ids=None):
  """LE plan (Tanaka 2018; see module docstring)."""
  del image_ids
  steps = _check_steps("le", steps, LE_STEPS)
  return _nibble_plan(key, "le", image_shape, block_size, steps,
                      per_block=False, scramble=False)


def build_ele(key, image_shape, block_size, steps=None, image_ids=None):
  """ELE plan (Madono 2020; see module docstring)."""
  del image_ids
  steps = _check_steps("ele", steps, ELE_STEPS)
  return _nibble_plan(key, "ele", image_shape, block_size, steps,
                      per_block=True, scramble="scramble" in steps)


def _le_bits(image_shape, b):
  n = b * b * 2 * image_shape[2]
  return _log2_factorial(n) + n


def _ele_bits(image_shape, b):
  h, w, _ = image_shape
  nb = (h // b) * (w // b)
  return _log2_factorial(nb) + nb * _le_bits(image_shape, b)


# --------------------------------------------------------------------------
# PE: pixel-wise negative-positive and colour shuffle.

PE_STEPS = ("negpos", "channel")


def _pe_arrays(key, label, h, w, c, steps):
  n = h * w
  orders = np.asarray(CHANNEL_ORDERS)[
      _stream(key, label, "channel").integers(6, n)
      if "channel" in steps else np.zeros(n, np.int64)]
  gather = (np.arange(n)[:, None] * c + orders).reshape(-1)
  xor = (_stream(key, label, "negpos").bits(n * c).astype(np.uint8) * 255
         if "negpos" in steps else np.zeros(n * c, np.uint8))
  return gather, xor


def build_pe(key, image_shape, block_size, steps=None, image_ids=None):
  """PE plan with one key for all images (see module docstring)."""
  del image_ids
  steps = _check_steps("pe", steps, PE_STEPS)
  h, w, c = check_geometry("pe", image_shape, 1)
  if block_size != 1:
    raise SchemeParameterError(f"scheme 'pe' is pixel-wise: block_size must be 1, got {block_size}")
  gather, xor = _pe_arrays(key, "pe", h, w, c, steps)
  return plans.make(gather, xor, scheme="pe", image_shape=(h, w, c),
                    encrypted_shape=(h, w, c), block_size=1,
                    representation=plans.PIXELS,
                    fingerprint=keys_lib.fingerprint(key))


def build_pe_per_image(key, image_shape, block_size, steps=None,
                       image_ids=None):
  """PE plan with a key per image, derived from the key and each image id.

  Args (beyond the common ones):
    image_ids: int `[N]`, a stable id per image (e.g. its index in the
      dataset); the plan then encrypts exactly a batch of those N images.
  """
  steps = _check_steps("pe_per_image", steps, PE_STEPS)
  h, w, c = check_geometry("pe_per_image", image_shape, 1)
  if block_size != 1:
    raise SchemeParameterError(
        f"scheme 'pe_per_image' is pixel-wise: block_size must be 1, got {block_size}")
  ids = None if image_ids is None else np.asarray(image_ids)
  if (ids is None or ids.ndim != 1 or ids.size == 0
      or not np.issubdtype(ids.dtype, np.integer)):
    raise SchemeParameterError(
        "scheme 'pe_per_image' needs image_ids: a non-empty 1-D sequence of "
        "integer image ids, one per image of the batch, got "
        f"{'None' if ids is None else f'{ids.dtype} of shape {ids.shape}'}")
  unique, counts = np.unique(ids, return_counts=True)
  if (counts > 1).any():
    # One key stream on two images leaks their XOR.
    raise DuplicateImageIdsError(
        f"scheme 'pe_per_image' got image ids {unique[counts > 1][:5].tolist()}"
        " more than once; every image of a batch needs its own id (two images "
        "encrypted with one per-image key leak their XOR)")
  rows = [_pe_arrays(key, f"pe_per_image/{int(i)}", h, w, c, steps)
          for i in ids]
  return plans.make(np.stack([g for g, _ in rows]), np.stack([x for _, x in rows]),
                    scheme="pe_per_image", image_shape=(h, w, c),
                    encrypted_shape=(h, w, c), block_size=1,
                    representation=plans.PIXELS,
                    fingerprint=keys_lib.fingerprint(key))


def _pe_bits(image_shape, b):
  h, w, c = image_shape
  return h * w * (c + math.log2(6))


for _scheme in (
    Scheme("etc", build_etc, 16, ETC_STEPS, plans.PIXELS, _etc_bits, True,
           "EtC: block scrambling, rotation/flip, negative-positive, colour shuffle"),
    Scheme("etc_gray", build_etc_gray, 8, ETC_GRAY_STEPS, plans.YCBCR_GRAY,
           _etc_gray_bits, True,
           "grayscale-based EtC on side-by-side Y/Cb/Cr planes"),
    Scheme("block_common", build_block_common, 16, BLOCK_COMMON_STEPS,
           plans.PIXELS, _block_common_bits, True,
           "block scrambling + in-block transforms common to all blocks"),
    Scheme("le", build_le, 4, LE_STEPS, plans.NIBBLES, _le_bits, False,
           "LE (Tanaka): 4-bit split, common in-block shuffle and inversion"),
    Scheme("ele", build_ele, 4, ELE_STEPS, plans.NIBBLES, _ele_bits, False,
           "ELE (Madono): LE with a key per block plus block scrambling"),
    Scheme("pe", build_pe, 1, PE_STEPS, plans.PIXELS, _pe_bits, False,
           "PE (Sirichotedumrong): pixel-wise inversion and colour shuffle"),
    Scheme("pe_per_image", build_pe_per_image, 1, PE_STEPS, plans.PIXELS,
           _pe_bits, False, "PE with a different key for every image"),
):
  _register(_scheme)


def get_scheme(name: str) -> Scheme:
  """Returns the registered `Scheme` called `name`.

  Raises:
    UnknownSchemeError: for an unknown name, listing the known ones.
  """
  try:
    return SCHEMES[name]
  except (KeyError, TypeError):
    raise UnknownSchemeError(
        f"unknown scheme {name!r}; known schemes: {sorted(SCHEMES)}") from None


def representation_plan(scheme: str, image_shape=(224, 224, 3),
                        block_size: Optional[int] = None) -> plans.Plan:
  """A plan that encrypts nothing: plain images in a scheme's layout.

  Evaluation needs the plain images in the encrypted representation (the
  [H, 3W, 1] YCbCr planes for `etc_gray`, the pixels otherwise) to score
  attacks block by block. No key is involved; the plan's fingerprint is
  that of an all-zero key.

  Args:
    scheme: a name in `SCHEMES`.
    image_shape: `(H, W, C)` of the plain images, as for `make_plan`.
    block_size: block side in pixels; the scheme's default when None.

  Returns:
    A `Plan` whose `apply` maps uint8 `[N, H, W, C]` plain images to the
    scheme's encrypted shape without changing a value (up to the colour
    conversion of `etc_gray`).
  """
  spec = get_scheme(scheme)
  block_size = spec.default_block_size if block_size is None else block_size
  return spec.build(bytes(32), tuple(image_shape), block_size,
                    steps=_NO_STEPS, image_ids=None)


def make_plan(key: bytes, scheme: str = "etc", image_shape=(224, 224, 3),
              block_size: Optional[int] = None,
              steps: Optional[Sequence[str]] = None,
              image_ids=None) -> plans.Plan:
  """Derives an encryption plan from a key, once per image shape.

  Args:
    key: the secret key, 32 bytes.
    scheme: a name in `SCHEMES`.
    image_shape: `(H, W, C)` of the plain images; H and W multiples of the
      block size, C = 3.
    block_size: block side in pixels; the scheme's default when None.
    steps: the scheme's steps to apply (all when None), for ablations.
    image_ids: int `[N]`, only for `pe_per_image`.

  Returns:
    A `Plan` (holding the key's fingerprint, never the key).
  """
  key = keys_lib.check_key(key)
  spec = get_scheme(scheme)
  if image_ids is not None and spec.name != "pe_per_image":
    raise SchemeParameterError(
        f"image_ids are only used by scheme 'pe_per_image', not {scheme!r}; "
        "one key covers every image of the other schemes")
  block_size = spec.default_block_size if block_size is None else block_size
  return spec.build(key, tuple(image_shape), block_size, steps=steps,
                    image_ids=image_ids)
