"""Known-plaintext key recovery from k plain/encrypted pairs under one key.

Every scheme is a permutation of values plus an XOR mask in its
representation (`plans`), so k pairs pin the key down wherever their
content is distinct:

- EtC and grayscale-based EtC: each cipher block is one plain block under
  one of the scheme's block variants (symmetry, colour order, inversion);
  a hash of every (plain block, variant) over the k images finds it.
- block_common, LE, ELE, PE: blocks (pixels for PE) are matched first by a
  signature no in-block transform changes (the sorted distances of the
  values from mid-range, image by image); then every cipher value is
  matched to the plain value (and mask) that equals it in every sample:
  all blocks of all k images for the maps common to all blocks
  (block_common, LE), the k images alone for per-block maps (ELE, PE).

Ties (flat blocks, few samples) are broken in order, one source per cipher
value; the recovered effective key is exact on the pairs and may be wrong
elsewhere where the pairs did not tell. Like `same_key`, nothing here takes
a key or a plan; scoring is `key_recovery_scoring`'s job.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from etcjax.encryption import plans
from etcjax.encryption import schemes
from etcjax.evaluation.attacks import same_key

_PER_BLOCK = {"ele": True, "pe": True, "pe_per_image": True,
              "block_common": False, "le": False}


def _hashes(values: np.ndarray, seed: int) -> np.ndarray:
  """uint64 hash of the last axis of integer `[..., S]` (wrapping sums)."""
  weights = np.random.default_rng(seed).integers(
      1, np.iinfo(np.int64).max, values.shape[-1], dtype=np.int64
  ).astype(np.uint64) | np.uint64(1)
  with np.errstate(over="ignore"):
    return (values.astype(np.uint64) * weights).sum(axis=-1, dtype=np.uint64)


def _assign(cipher: np.ndarray, candidates: np.ndarray
            ) -> Tuple[np.ndarray, np.ndarray]:
  """One-to-one matching of items to (source, variant) by equal hashes.

  Args:
    cipher: uint64 `[n]`, a hash per cipher item.
    candidates: uint64 `[n, V]`, a hash per source item and variant.

  Returns:
    `(source, variant)` int `[n]`: every cipher item gets a distinct
    source; items without an unused match get leftover sources, variant 0.
  """
  n, v = candidates.shape
  table: Dict[int, List[int]] = {}
  for flat, h in enumerate(candidates.reshape(-1).tolist()):
    table.setdefault(h, []).append(flat)
  hits = [table.get(h, []) for h in cipher.tolist()]
  source = np.full(n, -1)
  variant = np.zeros(n, np.int64)
  used = np.zeros(n, bool)
  for i in sorted(range(n), key=lambda i: len(hits[i])):
    for flat in hits[i]:
      s, k = divmod(flat, v)
      if not used[s]:
        source[i], variant[i], used[s] = s, k, True
        break
  left = iter(np.flatnonzero(~used).tolist())
  for i in np.flatnonzero(source < 0):
    source[i] = next(left)
  return source, variant


def _check_pairs(plain, cipher, scheme, image_shape, block_size):
  spec = schemes.get_scheme(scheme)
  b = spec.default_block_size if block_size is None else block_size
  shape = schemes.check_geometry(scheme, image_shape, b)
  plain, cipher = np.asarray(plain), np.asarray(cipher)
  rep_shape = plans.representation_shape(spec.representation, shape)
  enc_shape = (rep_shape if spec.representation == plans.YCBCR_GRAY
               else shape)
  if (plain.dtype != np.uint8 or plain.ndim != 4 or not len(plain)
      or tuple(plain.shape[1:]) != shape):
    raise ValueError(
        f"plain images of the pairs must be uint8 [k, {', '.join(map(str, shape))}], "
        f"k >= 1, got {plain.dtype} {plain.shape}")
  if (cipher.dtype != np.uint8 or cipher.shape[0] != plain.shape[0]
      or tuple(cipher.shape[1:]) != enc_shape):
    raise ValueError(
        f"encrypted images of the pairs must be uint8 [{len(plain)}, "
        f"{', '.join(map(str, enc_shape))}] (one per plain image), got "
        f"{cipher.dtype} {cipher.shape}")
  return spec, b, shape, rep_shape, plain, cipher


def recover_key(plain: np.ndarray, encrypted: np.ndarray, *, scheme: str,
                image_shape: Tuple[int, int, int],
                block_size: Optional[int] = None,
                steps: Optional[Sequence[str]] = None,
                seed: int = 0) -> same_key.RecoveredKey:
  """Known-plaintext key recovery.

  Args:
    plain: uint8 `[k, H, W, 3]`, the plain images of the pairs.
    encrypted: uint8 `[k] + encrypted shape`, the same images encrypted
      with the key (`[k, H, 3W, 1]` for etc_gray).
    scheme: the scheme (public).
    image_shape: `(H, W, 3)`.
    block_size: block side (the scheme's default when None).
    steps: the scheme's steps that are on (all when None).
    seed: seed of the hashes.

  Returns:
    A `same_key.RecoveredKey` (`ciphertexts` = k pairs).
  """
  start = time.time()
  spec, b, shape, rep_shape, plain, encrypted = _check_pairs(
      plain, encrypted, scheme, image_shape, block_size)
  steps = frozenset(spec.steps if steps is None else steps)
  rep_name = spec.representation
  _, mask_value = same_key._mid_and_mask(rep_name)  # pylint: disable=protected-access
  p_rep = same_key.plain_rep(plain, rep_name)
  c_rep = same_key.cipher_rep(encrypted, rep_name)
  h, w, c = rep_shape
  idx = schemes._block_indices(h, w, c, b)  # pylint: disable=protected-access
  k = len(plain)
  p_blocks = p_rep.reshape(k, -1)[:, idx]  # [k, nb, L]
  c_blocks = c_rep.reshape(k, -1)[:, idx]
  nb, local = idx.shape
  source = np.empty(h * w * c, np.int64)
  mask = np.zeros(h * w * c, np.uint8)
  if scheme in ("etc", "etc_gray"):
    maps = schemes._local_symmetry_maps(b, c)  # pylint: disable=protected-access
    maps = maps.reshape(-1, local)  # [V0, L] (symmetry x colour order)
    variants = [(m, inv) for inv in (0, mask_value) for m in range(len(maps))]
    cand = np.zeros((nb, len(variants)), np.uint64)
    for n in range(k):
      for v, (m, inv) in enumerate(variants):
        cand[:, v] += _hashes(p_blocks[n][:, maps[m]] ^ np.uint8(inv), n)
    ciph = np.zeros(nb, np.uint64)
    for n in range(k):
      ciph += _hashes(c_blocks[n], n)
    src_block, variant = _assign(ciph, cand)
    for i in range(nb):
      m, inv = variants[variant[i]]
      # cipher[i][l] = plain[src][maps[m][l]] ^ inv
      source[idx[src_block[i], maps[m]]] = idx[i]
      mask[idx[src_block[i], maps[m]]] = inv
  else:
    scrambled = scheme in ("block_common", "ele") and "scramble" in steps
    if scrambled:
      signature = lambda x: np.sort(np.abs(2 * x.astype(np.int64) - mask_value), axis=-1)
      ps = np.zeros(nb, np.uint64)
      cs = np.zeros(nb, np.uint64)
      for n in range(k):
        ps += _hashes(signature(p_blocks[n]), n)
        cs += _hashes(signature(c_blocks[n]), n)
      src_block, _ = _assign(cs, ps[:, None])
    else:
      src_block = np.arange(nb)
    p_aligned = p_blocks[:, src_block]  # plain block behind every cipher block
    if _PER_BLOCK[scheme]:
      groups = [[i] for i in range(nb)]
    else:
      groups = [list(range(nb))]
    for group in groups:
      # Samples: images x blocks of the group; columns: local values.
      cv = c_blocks[:, group].reshape(-1, local).T  # [L, S]
      pv = p_aligned[:, group].reshape(-1, local).T
      cand = np.stack([_hashes(pv, 7), _hashes(pv ^ np.uint8(mask_value), 7)],
                      axis=1)
      src_local, inv = _assign(_hashes(cv, 7), cand)
      for i in group:
        source[idx[src_block[i], src_local]] = idx[i]
        mask[idx[src_block[i], src_local]] = np.where(inv > 0, mask_value, 0)
  source, mask = source.reshape(rep_shape), mask.reshape(rep_shape)
  return same_key.RecoveredKey(
      same_key.effective_plan(source, mask, scheme, shape, b, rep_name), k, 0,
      time.time() - start)
