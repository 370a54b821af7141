"""Same-key key recovery: pooling evidence over many ciphertexts of one key.

Every image of a dataset is encrypted with ONE key, so cipher position i of
every image holds the same source value under the same transform. An
adversary holding N ciphertexts (and public plain images of the same
distribution, never the key or a plan) pools statistics over all of them:

- Block schemes (etc, etc_gray, and block_common once its in-block map is
  known): the boundary compatibility of two cipher blocks side by side,
  summed over all N images, says which blocks are neighbours and in which
  relative orientation, inversion and colour order, far more reliably than
  one image does. Values are centred at the middle of their range, so
  negative-positive inversion (p ^ 255 = 255 - p) is exactly a sign flip and
  all 12 relative photometric transforms come from one Gram matrix of edge
  vectors. A greedy placement (the jigsaw solver's frontier, `jigsaw`)
  assembles the block grid from these pooled costs.
- In-block maps common to all blocks (block_common, le): the correlation
  matrix of the in-block positions, pooled over all blocks of all images, is
  a signed permutation of the plain correlation matrix measured on public
  data: signs come from its leading eigenvector (natural images correlate
  positively), the permutation from a quadratic assignment (scipy's FAQ).
- PE (positions fixed, per-pixel colour order and per-value inversion):
  each pixel's transform is chosen to agree best with its neighbours' pooled
  over the N images (propagation, then iterated conditional modes).
- ELE (a different in-block map per block): the same matching per block,
  with only N samples each, then the block solver.

What remains is one global transform of the whole image (rotation/flip,
inversion, colour order) that pooled statistics of pairs cannot see; the
adversary picks it with its prior of the data (`priors.ImagePrior`). A
left-right mirror stays uncertain (natural images are mirror-symmetric).

The result is the *effective* key: a `plans.Plan` (fingerprint
'recovered') that decrypts the ciphertexts as well as the attack could, not
the key bytes. Scoring against the truth is `key_recovery_scoring`'s job;
nothing here takes a key or a plan.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tqdm

from etcjax.encryption import plans
from etcjax.encryption import schemes
from etcjax.evaluation.attacks import jigsaw
from etcjax.evaluation.attacks import priors

RECOVERED = "recovered"  # The fingerprint of every recovered plan.
# Multiply-adds the pooled edge statistics may cost (about 10 s here); more
# ciphertexts than this allows are subsampled for the edges only.
EDGE_BUDGET = 3e11
# The pooled edge Gram matrix holds (n 8 C) x (n 4 C) float32 values for n
# blocks; 224x224 images in 4x4 blocks would need 11 GB (etc, ele), so
# beyond this `PooledEdges` computes the rows the solver asks for instead.
MAX_GRAM_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class RecoveredKey:
  """An effective key recovered by an attack.

  Attributes:
    plan: a `plans.Plan` for the attacked scheme's representation whose
      `plans.invert` is the attack's decryption; fingerprint 'recovered'.
    ciphertexts: N, the ciphertexts (or pairs) the attack used.
    edge_images: ciphertexts used for the pooled block-edge statistics
      (fewer than N when `EDGE_BUDGET` subsamples them; 0 if unused).
    seconds: wall time of the attack.
  """

  plan: plans.Plan
  ciphertexts: int
  edge_images: int
  seconds: float


# --------------------------------------------------------------------------
# Representations (public: the algorithm is known).


def _mid_and_mask(representation: str) -> Tuple[float, int]:
  return (7.5, 15) if representation == plans.NIBBLES else (127.5, 255)


def cipher_rep(ciphertexts: np.ndarray, representation: str) -> np.ndarray:
  """Encrypted images in their representation's layout, uint8 `[N, h, w, c]`.

  Pixels and the grayscale layout are as given; nibbles split every value
  into (upper, lower) 4 bits: `[N, H, W, 6]`.
  """
  x = np.asarray(ciphertexts)
  if representation == plans.NIBBLES:
    n, h, w, c = x.shape
    return np.stack([x >> 4, x & 15], axis=-1).reshape(n, h, w, 2 * c)
  return x


def plain_rep(images: np.ndarray, representation: str) -> np.ndarray:
  """Plain RGB images in a representation's layout, uint8 `[N, h, w, c]`."""
  x = np.asarray(images)
  if representation == plans.YCBCR_GRAY:
    ycc = np.asarray(plans.rgb_to_ycbcr(x))
    return np.concatenate([ycc[..., 0], ycc[..., 1], ycc[..., 2]],
                          axis=2)[..., None]
  return cipher_rep(x, representation)


def rep_to_rgb(rep: np.ndarray, representation: str) -> np.ndarray:
  """Inverse of `plain_rep`: uint8 `[N, H, W, 3]`."""
  rep = np.asarray(rep)
  if representation == plans.NIBBLES:
    n, h, w, c2 = rep.shape
    pairs = rep.reshape(n, h, w, c2 // 2, 2)
    return ((pairs[..., 0] << 4) | pairs[..., 1]).astype(np.uint8)
  if representation == plans.YCBCR_GRAY:
    n, h, w3, _ = rep.shape
    planes = rep.reshape(n, h, 3, w3 // 3)
    return np.asarray(plans.ycbcr_to_rgb(np.moveaxis(planes, 2, -1)))
  return rep


def effective_plan(source: np.ndarray, mask: np.ndarray, scheme: str,
                   image_shape, block_size: int,
                   representation: str) -> plans.Plan:
  """A plan from a decryption map.

  Args:
    source: int `[h, w, c]` (the representation's shape): for every output
      value of the decryption, the flat index of the cipher value it takes.
    mask: uint8 `[h, w, c]`, XORed onto it.
    scheme, image_shape, block_size, representation: the plan's fields.

  Returns:
    The `plans.Plan` whose `invert` computes `cipher[source] ^ mask`.
  """
  d = np.asarray(source).reshape(-1).astype(np.int64)
  m = np.asarray(mask).reshape(-1).astype(np.uint8)
  gather = np.empty_like(d)
  gather[d] = np.arange(d.size)
  xor = np.empty_like(m)
  xor[d] = m
  rep_shape = plans.representation_shape(representation, image_shape)
  encrypted_shape = (image_shape if representation != plans.YCBCR_GRAY
                     else rep_shape)
  return plans.make(gather, xor, scheme=scheme, image_shape=image_shape,
                    encrypted_shape=encrypted_shape, block_size=block_size,
                    representation=representation, fingerprint=RECOVERED)


def decrypt_rep(rep: np.ndarray, source: np.ndarray,
                mask: np.ndarray) -> np.ndarray:
  """Applies a decryption map to cipher representations (numpy).

  Args:
    rep: uint8 `[N, h, w, c]` cipher representations.
    source, mask: as for `effective_plan`.

  Returns:
    uint8 `[N, h, w, c]`.
  """
  n = rep.shape[0]
  flat = rep.reshape(n, -1)[:, np.asarray(source).reshape(-1)]
  return (flat ^ np.asarray(mask, np.uint8).reshape(-1)).reshape(rep.shape)


def decrypt(recovered: RecoveredKey, ciphertexts: np.ndarray,
            chunk: int = 512) -> np.ndarray:
  """Decrypts ciphertexts with a recovered key.

  Args:
    recovered: the attack's result.
    ciphertexts: uint8 `[N] + plan.encrypted_shape`.
    chunk: images per call.

  Returns:
    uint8 `[N, H, W, 3]` numpy.
  """
  plan = recovered.plan
  out = []
  for start in range(0, len(ciphertexts), chunk):
    out.append(np.asarray(plans.invert(plan, ciphertexts[start:start + chunk])))
  return np.concatenate(out)


# --------------------------------------------------------------------------
# Pooled block-edge statistics and the block solver.

_IDENTITY = 0


def _symmetry_tables(b: int):
  """Index tables of the 8 square symmetries of a b x b block.

  Returns:
    `(maps, reverse, col_of, transpose)`: maps int `[8, b, b]` (the source
    index of every pixel of the transformed block); for each symmetry t the
    symmetry whose right column is t's reversed; for t >= 4 the rotation
    (t' < 4) whose left column, reversed, is t's; the symmetry equal to t
    followed by a transpose.
  """
  idx = np.arange(b * b).reshape(b, b)
  maps = np.stack([schemes.square_transform(idx, t) for t in range(8)])
  def find(pred):
    hits = [u for u in range(8) if pred(maps[u])]
    assert hits, "square symmetry tables are inconsistent"
    return hits[0]
  reverse = [find(lambda m, t=t: np.array_equal(m[:, -1], maps[t][::-1, -1])
                  and np.array_equal(m[:, -2], maps[t][::-1, -2]))
             for t in range(8)]
  col_of, col_rev = [], []
  for t in range(8):
    for u in range(4):
      if np.array_equal(maps[u][:, :2], maps[t][:, :2]):
        col_of.append(u), col_rev.append(False)
        break
      if np.array_equal(maps[u][::-1, :2], maps[t][:, :2]):
        col_of.append(u), col_rev.append(True)
        break
  transpose = [find(lambda m, t=t: np.array_equal(m, maps[t].T))
               for t in range(8)]
  return maps, np.asarray(reverse), np.asarray(col_of), np.asarray(col_rev), np.asarray(transpose)


class PooledEdges:
  """Boundary costs of every pair of block variants, pooled over images.

  The cost of variant x left of variant y is the squared error of each
  side's linear prediction of the other's facing column (Gallagher's
  prediction without the covariance), summed over every image:
  `|F_x - H_y|^2` with `F = [2R - R2, R]` and `H = [L, 2L - L2]`. Values
  are centred at the middle of their range, so inversion is a sign and
  colour order a permutation of channels: one Gram matrix of edge vectors
  gives every relative transform. Vertical costs are horizontal costs of
  transposed variants.
  """

  def __init__(self, pieces: np.ndarray, mid: float,
               photometric: Sequence[Tuple[Tuple[int, ...], int]],
               chunk: int = 64, max_gram_bytes: int = MAX_GRAM_BYTES):
    """Args:
      pieces: uint8 or float `[N, n, B, B, C]`, n pieces of N images.
      mid: centre of the value range (127.5 or 7.5).
      photometric: the block variants' photometric transforms, as
        (channel order, sign +1/-1).
      chunk: images per step of the pooling.
      max_gram_bytes: largest Gram matrix kept whole; beyond it (thousands
        of pieces) the edge vectors are kept instead and a placed piece's
        rows of the Gram matrix are computed when the solver asks for them.
    """
    n_img, n, b, _, c = pieces.shape
    self.n, self.c = n, c
    self.photometric = list(photometric)
    self.orders = sorted({o for o, _ in self.photometric})
    maps, self.reverse, self.col_of, self.col_rev, self.transpose = (
        _symmetry_tables(b))
    right = maps[:, :, -1].reshape(8, b)
    right2 = maps[:, :, -2].reshape(8, b)
    left = maps[:4, :, 0]
    left2 = maps[:4, :, 1]
    self.lazy = (n * 8 * c) * (n * 4 * c) * 4 > max_gram_bytes
    gram = None if self.lazy else np.zeros((n * 8 * c, n * 4 * c), np.float32)
    fms, hms = [], []
    norm_f = np.zeros((n, 8))
    norm_h = np.zeros((n, 4))
    for start in range(0, n_img, chunk):
      x = pieces[start:start + chunk].astype(np.float32) - mid
      x = x.reshape(x.shape[0], n, b * b, c)
      f = np.concatenate([2 * x[:, :, right] - x[:, :, right2],
                          x[:, :, right]], axis=3)  # [m, n, 8, 2b, c]
      h = np.concatenate([x[:, :, left], 2 * x[:, :, left] - x[:, :, left2]],
                         axis=3)  # [m, n, 4, 2b, c]
      norm_f += np.einsum("mntkc,mntkc->nt", f, f)
      norm_h += np.einsum("mntkc,mntkc->nt", h, h)
      fm = f.transpose(1, 2, 4, 0, 3).reshape(n * 8 * c, -1)
      hm = h.transpose(1, 2, 4, 0, 3).reshape(n * 4 * c, -1)
      if self.lazy:
        fms.append(fm), hms.append(hm)
      else:
        gram += fm @ hm.T
    if self.lazy:
      self._f = np.concatenate(fms, axis=1)  # [n 8 c, N 2b]
      self._h = np.concatenate(hms, axis=1)  # [n 4 c, N 2b]
      self._rows = self._cols = (-1, None)  # (piece, its Gram rows), cached
    else:
      self.gram = gram.reshape(n, 8, c, n, 4, c)
    self.norm_f = norm_f
    self.norm_h = norm_h[:, self.col_of]  # [n, 8]

  def _gram_of_left(self, piece: int) -> np.ndarray:
    """`gram[piece]`: piece's right edges against every left edge, `[8, c, n, 4, c]`."""
    if not self.lazy:
      return self.gram[piece]
    if self._rows[0] != piece:
      k = 8 * self.c
      rows = self._f[piece * k:(piece + 1) * k] @ self._h.T
      self._rows = (piece, rows.reshape(8, self.c, self.n, 4, self.c))
    return self._rows[1]

  def _gram_of_right(self, piece: int) -> np.ndarray:
    """`gram[:, :, :, piece]`: every right edge against piece's left edges, `[n, 8, c, 4, c]`."""
    if not self.lazy:
      return self.gram[:, :, :, piece]
    if self._cols[0] != piece:
      k = 4 * self.c
      cols = self._f @ self._h[piece * k:(piece + 1) * k].T
      self._cols = (piece, cols.reshape(self.n, 8, self.c, 4, self.c))
    return self._cols[1]

  def _inner(self, g: np.ndarray, order, other_orders) -> np.ndarray:
    """`sum_c g[order[c], :, other[c]]` for each other order: `[O, n]`."""
    return np.stack([sum(g[order[ch], :, o[ch]] for ch in range(self.c))
                     for o in other_orders])

  def costs(self, piece: int, sym: int, photo: int, side: str,
            syms: Sequence[int]) -> np.ndarray:
    """Costs of every candidate variant on one side of a placed variant.

    Args:
      piece, sym, photo: the placed variant (photo indexes `photometric`).
      side: 'right', 'left', 'below' or 'above' (where the candidates go).
      syms: the candidates' symmetries.

    Returns:
      float64 `[n, len(syms), len(photometric)]`.
    """
    vertical = side in ("below", "above")
    t = self.transpose[sym] if vertical else sym
    order, sign = self.photometric[photo]
    out = np.empty((self.n, len(syms), len(self.photometric)))
    for s_i, cand in enumerate(syms):
      u = self.transpose[cand] if vertical else cand
      if side in ("right", "below"):  # placed (t) left of candidate (u)
        row = self.reverse[t] if self.col_rev[u] else t
        g = self._gram_of_left(piece)[row, :, :, self.col_of[u], :]  # [c, n, c]
        inner = self._inner(g, order, self.orders)
        base = self.norm_f[piece, t] + self.norm_h[:, u]
      else:  # candidate (u) left of placed (t)
        row = self.reverse[u] if self.col_rev[t] else u
        g = self._gram_of_right(piece)[:, row, :, self.col_of[t], :]  # [n, c, c]
        g = g.transpose(1, 0, 2)  # [c(cand), n, c(placed)]
        inner = np.stack([sum(g[o[ch], :, order[ch]] for ch in range(self.c))
                          for o in self.orders])
        base = self.norm_f[:, u] + self.norm_h[piece, t]
      for k, (o, sg) in enumerate(self.photometric):
        out[:, s_i, k] = base - 2 * sign * sg * inner[self.orders.index(o)]
    return out


_SIDES = {(0, 1): "right", (0, -1): "left", (1, 0): "below", (-1, 0): "above"}


def solve_blocks(edges: PooledEdges, grid_shape: Tuple[int, int],
                 syms: Sequence[int], progress: bool = False,
                 used: Optional[np.ndarray] = None
                 ) -> Dict[Tuple[int, int], Tuple[int, int, int]]:
  """Greedy placement of pieces on pooled costs (the jigsaw's frontier).

  Args:
    edges: the pooled costs.
    grid_shape: `(gh, gw)` of the block grid.
    syms: symmetries a piece may have undergone.
    progress: show a progress bar.
    used: bool `[n]`, pieces already placed elsewhere (updated in place):
      the grid then takes `gh * gw` of the others.

  Returns:
    {cell: (piece, symmetry, photometric index)} for every cell, cells in
    a box of shape `grid_shape` or (with odd symmetries) its transpose,
    with any origin.
  """
  n, n_ph = edges.n, len(edges.photometric)
  per_piece = len(syms) * n_ph
  gh, gw = grid_shape
  transposable = any(t % 2 for t in syms) and gh != gw
  shapes = [(gh, gw)] + ([(gw, gh)] if transposable else [])
  frontier = jigsaw._Frontier(n, per_piece)  # pylint: disable=protected-access
  placed: Dict[Tuple[int, int], int] = {}
  used = np.zeros(n, bool) if used is None else used
  box = [0, 0, 0, 0]

  def decode(variant):
    piece, rest = divmod(variant, per_piece)
    s, k = divmod(rest, n_ph)
    return piece, syms[s], k

  def place(cell, variant):
    placed[cell] = variant
    used[variant // per_piece] = True
    frontier.remove(cell)
    box[:] = [min(box[0], cell[0]), max(box[1], cell[0]),
              min(box[2], cell[1]), max(box[3], cell[1])]
    piece, sym, k = decode(variant)
    for (dr, dc), side in _SIDES.items():
      other = (cell[0] + dr, cell[1] + dc)
      if other not in placed:
        d = edges.costs(piece, sym, k, side, syms).reshape(-1)
        frontier.add(other, np.maximum(d, 0.0))

  def fits(cell):
    rows = max(box[1], cell[0]) - min(box[0], cell[0]) + 1
    cols = max(box[3], cell[1]) - min(box[2], cell[1]) + 1
    return any(rows <= sh and cols <= sw for sh, sw in shapes)

  place((0, 0), _start(edges, syms, used) * per_piece)
  bar = tqdm.tqdm(total=gh * gw, desc="placing blocks", leave=False,
                  disable=not progress)
  bar.update(1)
  jigsaw.place_greedily(frontier, placed, gh * gw, used, fits, place,
                        "block solver", on_place=lambda: bar.update(1))
  bar.close()
  return {cell: decode(v) for cell, v in placed.items()}


def _start(edges: PooledEdges, syms, used: np.ndarray) -> int:
  """The unused piece whose best right neighbour is most distinctive."""
  free = np.flatnonzero(~used)
  if len(free) < 3:
    return int(free[0])
  margins = np.full(edges.n, -np.inf)
  for p in free:
    d = edges.costs(p, syms[0], 0, "right", syms).min(axis=(1, 2))
    d[p] = np.inf
    d[used] = np.inf
    two = np.sort(d)[:2]
    margins[p] = 1.0 - two[0] / max(two[1], 1e-9)
  return int(np.argmax(margins))


def _edge_images(n_img: int, n_pieces: int, c: int, b: int,
                 budget: float) -> int:
  per_image = (n_pieces * 8 * c) * (n_pieces * 4 * c) * 2 * b
  return int(max(1, min(n_img, budget // max(per_image, 1))))


def _pieces_of(rep: np.ndarray, b: int) -> np.ndarray:
  """`[N, h, w, c]` -> `[N, nb, b, b, c]` in raster block order."""
  n, h, w, c = rep.shape
  return rep.reshape(n, h // b, b, w // b, b, c).transpose(
      0, 1, 3, 2, 4, 5).reshape(n, -1, b, b, c)


def _assembly_map(placement, b: int, rep_shape, inner_source: np.ndarray,
                  inner_mask: np.ndarray, photometric, mask_value: int
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """Decryption map `(source, mask)` `[h', w', c]` of a block placement.

  Args:
    placement: from `solve_blocks`.
    b: block side.
    rep_shape: `(h, w, c)` of the representation.
    inner_source, inner_mask: `[h, w, c]` decryption map applied before
      the blocks are placed (in-block decryption; identity for EtC).
    photometric: the variants' photometric transforms.
    mask_value: the inversion mask (255 or 15).
  """
  h, w, c = rep_shape
  src_blocks = _pieces_of(inner_source[None], b)[0]
  mask_blocks = _pieces_of(inner_mask[None], b)[0]
  rows = [r for r, _ in placement]
  cols = [q for _, q in placement]
  r0, c0 = min(rows), min(cols)
  gh, gw = max(rows) - r0 + 1, max(cols) - c0 + 1
  source = np.zeros((gh * b, gw * b, c), np.int64)
  mask = np.zeros((gh * b, gw * b, c), np.uint8)
  for (r, q), (piece, sym, k) in placement.items():
    order, sign = photometric[k]
    blk = schemes.square_transform(src_blocks[piece], sym)[..., list(order)]
    msk = schemes.square_transform(mask_blocks[piece], sym)[..., list(order)]
    if sign < 0:
      msk = msk ^ np.uint8(mask_value)
    source[(r - r0) * b:(r - r0 + 1) * b, (q - c0) * b:(q - c0 + 1) * b] = blk
    mask[(r - r0) * b:(r - r0 + 1) * b, (q - c0) * b:(q - c0 + 1) * b] = msk
  return source, mask


def _photometric(c: int, colour: bool, inversion: bool):
  orders = (list(itertools.permutations(range(c))) if colour and c > 1
            else [tuple(range(c))])
  signs = [1, -1] if inversion else [1]
  return [(o, s) for s in signs for o in orders]


# --------------------------------------------------------------------------
# The global transform, from the adversary's prior.


def _resolve_global(source, mask, rep, representation, rep_shape, syms,
                    photometric, mask_value, prior: priors.ImagePrior,
                    budget: float = 3e8):
  """The global variant of a decryption map the prior finds most likely.

  Args:
    source, mask: `[h', w', c]` decryption map (any orientation).
    rep: uint8 cipher representations `[N, h, w, c]` (a sample is used).
    representation, rep_shape: the representation and its `(h, w, c)`.
    syms, photometric: the whole-image transforms to try.
    mask_value: inversion mask.
    prior: the adversary's prior.

  Returns:
    `(source, mask)` of the chosen variant, shape `rep_shape`.
  """
  # As many ciphertexts as the budget of decrypted values allows (at least
  # 32): the prior's verdict is an average over them.
  per_image = len(syms) * len(photometric) * source.size
  max_images = max(32, int(budget // per_image))
  sample = rep[np.unique(np.linspace(0, len(rep) - 1,
                                     min(len(rep), max_images)).astype(int))]
  best, best_score = None, -np.inf
  for t in syms:
    s_t = schemes.square_transform(source, t)
    if s_t.shape != tuple(rep_shape):
      continue
    m_t = schemes.square_transform(mask, t)
    for order, sign in photometric:
      s_k = np.ascontiguousarray(s_t[..., list(order)])
      flip = np.where(np.asarray(sign) < 0, mask_value, 0).astype(np.uint8)
      m_k = m_t[..., list(order)] ^ flip
      images = rep_to_rgb(decrypt_rep(sample, s_k, m_k), representation)
      score = float(prior.score(images).mean())
      if score > best_score:
        best, best_score = (s_k, np.ascontiguousarray(m_k)), score
  if best is None:
    raise AssertionError("no global variant has the image's shape; a bug")
  return best


# --------------------------------------------------------------------------
# In-block maps by correlation matching.


def _correlation(samples: np.ndarray, chunk: int = 8192) -> np.ndarray:
  """Pearson correlation of the columns of `[S, L]` (0 for constant ones)."""
  mean = samples.mean(axis=0, dtype=np.float64)
  cov = np.zeros((samples.shape[1],) * 2)
  for start in range(0, len(samples), chunk):
    x = samples[start:start + chunk].astype(np.float32) - mean.astype(np.float32)
    cov += (x.T @ x).astype(np.float64)
  cov /= max(len(samples) - 1, 1)
  sd = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
  corr = cov / sd[:, None] / sd[None, :]
  corr[np.diag(cov) < 1e-9] = 0
  corr[:, np.diag(cov) < 1e-9] = 0
  return corr


def match_signed_permutation(cipher_corr: np.ndarray, plain_corr: np.ndarray,
                             seed: int = 0, restarts: int = 3
                             ) -> Tuple[np.ndarray, np.ndarray]:
  """Finds P, S with `cipher_corr ~ S P plain_corr P^T S`.

  Args:
    cipher_corr: float `[L, L]` correlation of the cipher positions, or
      `[K, L, L]` for K independent problems against the same template
      (ELE's blocks), solved together.
    plain_corr: float `[L, L]` correlation of plain positions (public data).
    seed: seed of the assignment's random starts.
    restarts: random starts of the quadratic assignment besides the
      barycentre.

  Returns:
    `(match, signs)`: int `[L]` (`[K, L]` for a batch), the plain position
    of every cipher position; int `[L]` (`[K, L]`) in {+1, -1}, the sign
    of every cipher position.
  """
  a_all = np.asarray(cipher_corr, np.float64)
  single = a_all.ndim == 2
  a_all = a_all[None] if single else a_all
  b = np.asarray(plain_corr, np.float64)
  lead = np.linalg.eigh(a_all)[1][..., -1]  # [K, L]
  signs = np.where(lead >= 0, 1, -1)
  signs = np.where(signs.sum(axis=1, keepdims=True) < 0, -signs, signs)
  template = None
  for _ in range(2):  # Signs and the matching refine each other.
    a = a_all * signs[:, :, None] * signs[:, None, :]
    match = _faq_batch(a, b, seed, restarts)
    template = b[match[:, :, None], match[:, None, :]]  # [K, L, L]
    # The sign of each cipher position that best agrees with the template.
    agree = (a_all * signs[:, None, :]) * template
    idx = np.arange(agree.shape[1])
    agree[:, idx, idx] = 0
    signs = np.where(agree.sum(axis=2) >= 0, 1, -1)
  del template
  return (match[0], signs[0]) if single else (match, signs)


def _faq(a: np.ndarray, b: np.ndarray, seed: int, restarts: int) -> np.ndarray:
  """The permutation (col_ind) maximising `sum a[i, j] b[p[i], p[j]]`."""
  return _faq_batch(np.asarray(a, np.float64)[None], b, seed, restarts)[0]


def _faq_batch(a: np.ndarray, b: np.ndarray, seed: int, restarts: int,
               chunk: int = 256) -> np.ndarray:
  """`_faq` for K problems `a[k]` against one `b`: int `[K, L]`.

  The best of the barycentre start and `restarts` random starts of each
  problem, as scipy's `quadratic_assignment(method='faq', maximize=True,
  maxiter=60)` with a generator seeded by `seed` finds them: the same
  Frank-Wolfe steps, with the matrix products of all problems batched
  (thousands of ELE blocks made scipy's per-call overhead the attack's
  cost) and only the linear assignments solved one by one.
  """
  from scipy.optimize import _qap  # pylint: disable=g-import-not-at-top
  k_all, n = a.shape[0], a.shape[1]
  rng = np.random.default_rng(seed)
  # scipy draws one random start per call from the shared generator; a
  # fresh generator per problem gives every problem the same starts.
  starts = [np.full((n, n), 1.0 / n)]
  for _ in range(restarts):
    k = _qap._doubly_stochastic(rng.uniform(size=(n, n)))  # pylint: disable=protected-access
    starts.append((np.full((n, n), 1.0 / n) + k) / 2)
  best = np.zeros((k_all, n), np.int64)
  for lo in range(0, k_all, chunk):
    a_c = a[lo:lo + chunk]
    best_fun = np.full(len(a_c), -np.inf)
    for p0 in starts:
      perm = _faq_run(a_c, b, p0)
      fun = np.einsum("kij,kij->k", a_c, b[perm[:, :, None], perm[:, None, :]])
      better = fun > best_fun
      best[lo:lo + chunk][better] = perm[better]
      best_fun = np.where(better, fun, best_fun)
  return best


def _faq_run(a: np.ndarray, b: np.ndarray, p0: np.ndarray,
             maxiter: int = 60, tol: float = 0.03) -> np.ndarray:
  """scipy's FAQ iteration (no seeds, maximising) on a batch: int `[K, L]`."""
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  k_all, n = a.shape[0], a.shape[1]
  eye = np.eye(n)
  p = np.broadcast_to(p0, (k_all, n, n)).copy()
  active = np.arange(k_all)
  # numpy multiplies stacks of matrices with BLAS only when they are
  # contiguous; products with the shared b are one flat product each.
  a_t = np.ascontiguousarray(a.transpose(0, 2, 1))
  b_t = np.ascontiguousarray(b.T)
  for _ in range(maxiter):
    if not len(active):
      break
    aa, aa_t, pp = a[active], a_t[active], p[active]
    m = len(active)
    grad = ((aa @ pp).reshape(m * n, n) @ b_t
            + (aa_t @ pp).reshape(m * n, n) @ b).reshape(m, n, n)
    cols = np.stack([optimize.linear_sum_assignment(g, maximize=True)[1]
                     for g in grad])
    q = eye[cols]
    r = pp - q
    ar = aa_t @ r
    # b r^T for every problem: (r b^T)^T.
    br = (r.reshape(m * n, n) @ b_t).reshape(m, n, n).transpose(0, 2, 1)
    rows = np.arange(m)[:, None]
    b22a = np.einsum("kij,kij->k", ar, b.T[cols])
    b22b = np.einsum("kij,kij->k", aa, br[rows, cols])
    qa = np.einsum("kji,kij->k", ar, br)
    qb = b22a + b22b
    # Maximising: the critical point of qa x^2 + qb x is a maximum when
    # qa < 0; otherwise the better endpoint (x = 0 unless qa + qb > 0).
    with np.errstate(divide="ignore", invalid="ignore"):
      crit = -qb / (2 * qa)
    inside = (qa < 0) & (crit >= 0) & (crit <= 1)
    alpha = np.where(inside, crit, np.where(-(qb + qa) < 0, 1.0, 0.0))
    new = alpha[:, None, None] * pp + (1 - alpha[:, None, None]) * q
    step = np.linalg.norm((pp - new).reshape(m, -1), axis=1)
    p[active] = new
    active = active[step / np.sqrt(n) >= tol]
  return np.stack([optimize.linear_sum_assignment(x, maximize=True)[1]
                   for x in p])


# --------------------------------------------------------------------------
# The attacks.

_MAX_SAMPLES = 120_000  # Block samples for in-block correlations.


def _check_inputs(ciphertexts, scheme, block_size, image_shape, public_plain):
  spec = schemes.get_scheme(scheme)
  b = spec.default_block_size if block_size is None else block_size
  h, w, c = schemes.check_geometry(scheme, image_shape, b)
  rep_shape = plans.representation_shape(spec.representation, (h, w, c))
  enc_shape = (rep_shape if spec.representation == plans.YCBCR_GRAY
               else (h, w, c))
  x = np.asarray(ciphertexts)
  if (x.dtype != np.uint8 or x.ndim != 4 or not len(x)
      or tuple(x.shape[1:]) != enc_shape):
    raise ValueError(
        "ciphertexts must be a non-empty uint8 batch "
        f"[N, {', '.join(map(str, enc_shape))}] for scheme {scheme!r} on "
        f"{h}x{w} images, got {x.dtype} {x.shape}")
  p = np.asarray(public_plain)
  if (p.dtype != np.uint8 or p.ndim != 4 or len(p) < 2
      or tuple(p.shape[1:]) != (h, w, c)):
    raise ValueError(
        f"public_plain must be at least 2 uint8 images [M, {h}, {w}, {c}] "
        f"of the same distribution, got {p.dtype} {p.shape}")
  return spec, b, (h, w, c), rep_shape, x, p


def recover_key(ciphertexts: np.ndarray, *, scheme: str,
                image_shape: Tuple[int, int, int], public_plain: np.ndarray,
                block_size: Optional[int] = None,
                steps: Optional[Sequence[str]] = None,
                edge_budget: float = EDGE_BUDGET, seed: int = 0,
                progress: bool = False) -> RecoveredKey:
  """Ciphertext-only same-key key recovery.

  Args:
    ciphertexts: uint8 `[N] + encrypted shape` (`[N, H, W, 3]`;
      `[N, H, 3W, 1]` for etc_gray), all encrypted with one key.
    scheme: a name in `encryption.SCHEMES` (public).
    image_shape: `(H, W, 3)` of the plain images (public).
    public_plain: uint8 `[M, H, W, 3]`, M >= 2, plain images of the same
      distribution (e.g. the training split when attacking the test split).
    block_size: block side (the scheme's default when None).
    steps: the scheme's steps that are on (all when None).
    edge_budget: multiply-adds allowed for the pooled edge statistics.
    seed: seed of the random starts of the assignment.
    progress: show progress bars.

  Returns:
    The `RecoveredKey`.

  Raises:
    ValueError: inputs that do not fit the scheme.
  """
  start = time.time()
  spec, b, shape, rep_shape, x, public = _check_inputs(
      ciphertexts, scheme, block_size, image_shape, public_plain)
  steps = frozenset(spec.steps if steps is None else steps)
  rep_name = spec.representation
  mid, mask_value = _mid_and_mask(rep_name)
  rep = cipher_rep(x, rep_name)
  prior = priors.ImagePrior.fit(public)
  h, w, c = rep_shape
  identity = np.arange(h * w * c).reshape(rep_shape)
  zero = np.zeros(rep_shape, np.uint8)
  edge_images = 0
  global_syms = list(range(8))
  pairs = [(tuple(v for ch in o for v in (2 * ch, 2 * ch + 1)), s)
           for o, s in _photometric(3, True, True)]
  if scheme == "etc_gray" and "scramble" in steps:
    syms = list(range(8)) if "rotate_flip" in steps else [0]
    photometric = _photometric(1, False, "negpos" in steps)
    source, mask, edge_images = _gray_planes(
        rep, b, rep_shape, syms, photometric, edge_budget, prior, progress)
    global_syms, global_ph = [0], [((0,), 1)]
  elif scheme in ("etc", "etc_gray"):
    syms = list(range(8)) if "rotate_flip" in steps else [0]
    photometric = _photometric(c, "channel" in steps, "negpos" in steps)
    source, mask, edge_images = _blocks(
        rep, rep, b, identity, zero, syms, photometric, photometric, mid,
        mask_value, edge_budget, progress)
    global_syms, global_ph = syms, photometric
  elif scheme == "block_common":
    inner_source, inner_mask = _common_inner(
        rep, public, rep_name, b, rep_shape, mid, mask_value, seed, True)
    global_ph = _photometric(3, True, True)
    if "scramble" in steps:
      pre = decrypt_rep(rep, inner_source, inner_mask)
      # The matching is right up to one symmetry of the square and one
      # colour order and inversion, the same in every block.
      source, mask, edge_images = _blocks(
          rep, pre, b, inner_source, inner_mask, list(range(8)),
          [(tuple(range(c)), 1)], [(tuple(range(c)), 1)], mid, mask_value,
          edge_budget, progress)
    else:
      source, mask = _per_block_symmetry(rep, inner_source, inner_mask, b,
                                         rep_name)
  elif scheme == "le":
    inner_source, inner_mask = _common_inner(
        rep, public, rep_name, b, rep_shape, mid, mask_value, seed, False)
    source, mask = _per_block_symmetry(rep, inner_source, inner_mask, b,
                                       rep_name)
    global_syms, global_ph = [0], pairs
  elif scheme == "ele":
    source, mask, edge_images = _ele(rep, public, rep_shape, b, mid,
                                     mask_value, seed, edge_budget,
                                     "scramble" in steps, pairs, progress)
    global_ph = pairs
  elif scheme in ("pe", "pe_per_image"):
    source, mask = _pixels(rep, "channel" in steps, "negpos" in steps, mid)
    global_syms = [0]
    orders = (list(itertools.permutations(range(3))) if "channel" in steps
              else [(0, 1, 2)])
    signs = (list(itertools.product((1, -1), repeat=3)) if "negpos" in steps
             else [(1, 1, 1)])
    global_ph = [(o, s) for s in signs for o in orders]
  else:
    raise ValueError(f"no same-key attack for scheme {scheme!r}")
  source, mask = _resolve_global(source, mask, rep, rep_name, rep_shape,
                                 global_syms, global_ph, mask_value, prior)
  return RecoveredKey(effective_plan(source, mask, scheme, shape, b, rep_name),
                      len(x), edge_images, time.time() - start)


def _blocks(rep, pre, b, inner_source, inner_mask, syms, photometric,
            rep_photometric, mid, mask_value, budget, progress):
  """Solves the block puzzle on pooled edges; the decryption map.

  Args:
    rep: the cipher representations `[N, h, w, c]`.
    pre: `[N, h', w', c']` images whose blocks are the pieces (the cipher
      representation itself, or in-block decrypted images, maybe as RGB).
    b: block side.
    inner_source, inner_mask: in-block decryption map giving `pre`'s
      blocks from `rep` (identity for EtC).
    syms, photometric: the pieces' variants (photometric on `pre`).
    rep_photometric: the same photometric transforms on `rep`'s channels.
    mid, mask_value: the representation's value centre and inversion.
    budget: edge multiply-adds.

  Returns:
    `(source, mask, edge_images)`.
  """
  n_img, hp, wp, cp = pre.shape
  nb = (hp // b) * (wp // b)
  n_edge = _edge_images(n_img, nb, cp, b, budget)
  pick = np.unique(np.linspace(0, n_img - 1, n_edge).round().astype(int))
  edges = PooledEdges(_pieces_of(pre[pick], b), 127.5 if cp == 3 and
                      pre is not rep else mid, photometric)
  placement = solve_blocks(edges, (hp // b, wp // b), syms, progress)
  source, mask = _assembly_map(placement, b, rep.shape[1:], inner_source,
                               inner_mask, rep_photometric, mask_value)
  return source, mask, len(pick)


def _block_local_indices(rep_shape, b):
  h, w, c = rep_shape
  return schemes._block_indices(h, w, c, b)  # pylint: disable=protected-access


def _samples(rep, b, limit, seed=0):
  blocks = _pieces_of(rep, b)
  flat = blocks.reshape(-1, blocks[0, 0].size)
  if len(flat) > limit:
    rows = np.random.default_rng(seed).choice(len(flat), limit, replace=False)
    flat = flat[np.sort(rows)]
  return flat


def _common_inner(rep, public, rep_name, b, rep_shape, mid, mask_value, seed,
                  pixel_grouped):
  """In-block decryption map common to all blocks, by correlation matching.

  Returns:
    `(source, mask)` `[h, w, c]`, right up to one symmetry of the square,
    colour order and inversion common to all blocks.
  """
  h, w, c = rep_shape
  cipher_corr = _correlation(_samples(rep, b, _MAX_SAMPLES, seed))
  plain_corr = _correlation(_samples(plain_rep(public, rep_name), b,
                                     _MAX_SAMPLES, seed + 1))
  local = b * b * c
  if pixel_grouped:
    # block_common moves whole pixels (its colour order is common), so
    # match pixels on their mean correlation over channel pairs.
    lead = np.linalg.eigh(cipher_corr)[1][:, -1]
    signs = np.where(lead >= 0, 1, -1)
    if signs.sum() < 0:
      signs = -signs
    a = cipher_corr * signs[:, None] * signs[None, :]
    pix_c = a.reshape(b * b, c, b * b, c).mean(axis=(1, 3))
    pix_0 = plain_corr.reshape(b * b, c, b * b, c).mean(axis=(1, 3))
    match_pix = _faq(pix_c, pix_0, seed, restarts=1)
    match = (match_pix[:, None] * c + np.arange(c)[None, :]).reshape(-1)
  else:
    match, signs = match_signed_permutation(cipher_corr, plain_corr, seed)
  idx = _block_local_indices(rep_shape, b)  # [nb, local]
  source = np.empty(h * w * c, np.int64)
  mask = np.zeros(h * w * c, np.uint8)
  source[idx[:, match]] = idx
  mask[idx[:, match]] = np.where(signs < 0, mask_value, 0).astype(np.uint8)
  return source.reshape(rep_shape), mask.reshape(rep_shape)


def _per_block_symmetry(rep, source, mask, b, rep_name, max_images=64):
  """Applies to every block the square symmetry that best joins blocks.

  An in-block map right up to one symmetry of the square (the same in every
  block) leaves blocks that do not fit their neighbours; the symmetry that
  minimises the pooled jumps across block boundaries undoes it.
  """
  sample = rep[np.unique(np.linspace(0, len(rep) - 1,
                                     min(len(rep), max_images)).astype(int))]
  h, w, c = source.shape
  best, best_cost = None, np.inf
  for t in range(8):
    s_t = _transform_blocks(source, b, t)
    m_t = _transform_blocks(mask, b, t)
    img = rep_to_rgb(decrypt_rep(sample, s_t, m_t), rep_name).astype(np.float32)
    cost = (np.abs(img[:, :, b - 1:-1:b] - img[:, :, b::b]).mean()
            + np.abs(img[:, b - 1:-1:b] - img[:, b::b]).mean())
    if cost < best_cost:
      best, best_cost = (s_t, m_t), cost
  return best


def _transform_blocks(image, b, t):
  h, w, c = image.shape
  blocks = _pieces_of(image[None], b)[0]
  out = np.stack([schemes.square_transform(x, t) for x in blocks])
  return out.reshape(h // b, w // b, b, b, c).transpose(0, 2, 1, 3, 4).reshape(
      h, w, c)


def _ele(rep, public, rep_shape, b, mid, mask_value, seed, budget, scramble,
         pairs, progress):
  """ELE: a correlation matching per block, then the block solver."""
  h, w, c = rep_shape
  n_img = len(rep)
  plain_corr = _correlation(_samples(plain_rep(public, plans.NIBBLES), b,
                                     _MAX_SAMPLES, seed + 1))
  gh, gw = h // b, w // b
  grid = rep.reshape(n_img, gh, b, gw, b, c)
  corr = np.empty((gh * gw, b * b * c, b * b * c))
  # Row by row of blocks: no copy of all ciphertexts in block order.
  for i in tqdm.trange(gh, desc="ELE block correlations", leave=False,
                       disable=not progress):
    row = grid[:, i].transpose(2, 0, 1, 3, 4).reshape(gw, n_img, -1)
    for j in range(gw):
      corr[i * gw + j] = _correlation(row[j])
  # All blocks' matchings at once: per-block calls cost ~0.2 s each in
  # scipy's overhead, minutes for Imagenette's 3,136 blocks.
  match, signs = match_signed_permutation(corr, plain_corr, seed, restarts=1)
  del corr
  idx = _block_local_indices(rep_shape, b)
  source = np.empty(h * w * c, np.int64)
  mask = np.zeros(h * w * c, np.uint8)
  rows = np.arange(len(idx))[:, None]
  source[idx[rows, match]] = idx
  mask[idx[rows, match]] = np.where(signs < 0, mask_value, 0)
  source, mask = source.reshape(rep_shape), mask.reshape(rep_shape)
  if not scramble:
    return (*_per_block_symmetry(rep, source, mask, b, plans.NIBBLES), 0)
  # Only the ciphertexts the edge budget lets the block solver use are
  # decrypted in-block (all 3,925 Imagenette images would take 1.8 GB).
  n_edge = _edge_images(n_img, gh * gw, 3, b, budget)
  pick = np.unique(np.linspace(0, n_img - 1, n_edge).round().astype(int))
  pre = rep_to_rgb(decrypt_rep(rep[pick], source, mask), plans.NIBBLES)
  return _blocks(rep, pre, b, source, mask, list(range(8)),
                 _photometric(3, True, True), pairs, mid, mask_value, budget,
                 progress)


def _pixels(rep, colour, inversion, mid, sweeps=10, chunk=256):
  """PE: every pixel's colour order and inversions from its neighbours.

  Returns:
    `(source, mask)` `[H, W, 3]`, right up to one global colour order and
    per-channel inversion.
  """
  n, h, w, c = rep.shape
  right = np.zeros((h, w - 1, c, c))
  down = np.zeros((h - 1, w, c, c))
  for start in range(0, n, chunk):
    z = rep[start:start + chunk].astype(np.float32) - mid
    right += np.einsum("nhwa,nhwb->hwab", z[:, :, :-1], z[:, :, 1:])
    down += np.einsum("nhwa,nhwb->hwab", z[:, :-1], z[:, 1:])
  orders = (np.asarray(list(itertools.permutations(range(c)))) if colour
            else np.arange(c)[None])
  order = np.zeros((h, w), np.int64)  # index into orders
  sign = np.ones((h, w, c))

  def votes(cells):
    """Sum over decided neighbours of s_q[c] A[a, sigma_q[c]]: [.., a, c]."""
    total = np.zeros((h, w, c, c))
    ch = np.arange(c)
    def add(a, q_order, q_sign, sl):
      # a: [..., a, b] with p first; neighbour q's decrypted channel c is
      # s_q[c] z_q[sigma_q[c]].
      sig = orders[q_order]  # [..., c]
      g = np.take_along_axis(a, sig[..., None, :], axis=-1)  # [..., a, c]
      total[sl] += g * q_sign[..., None, :] * cells[sl][..., None, None]
    # Right neighbour of p at (i, j+1): A = right[i, j] (p first).
    add(right, order[:, 1:], sign[:, 1:], np.s_[:, :-1])
    add(right.swapaxes(-1, -2), order[:, :-1], sign[:, :-1], np.s_[:, 1:])
    add(down, order[1:], sign[1:], np.s_[:-1])
    add(down.swapaxes(-1, -2), order[:-1], sign[:-1], np.s_[1:])
    del ch
    return total

  def choose(total):
    # total[..., a, c]: for order sigma, channel c takes source sigma[c].
    v = np.stack([total[..., o, np.arange(c)] for o in orders], axis=-2)
    score = (np.abs(v) if inversion else v).sum(-1)  # [..., O]
    best = score.argmax(-1)
    chosen = np.take_along_axis(v, best[..., None, None], axis=-2)[..., 0, :]
    s = np.where(chosen < 0, -1.0, 1.0) if inversion else np.ones_like(chosen)
    return best, s

  # Propagation: the first row left to right, then row by row downwards.
  decided = np.zeros((h, w), bool)
  decided[0, 0] = True
  for j in range(1, w):
    t = np.zeros((c, c))
    sig = orders[order[0, j - 1]]
    t += right[0, j - 1].T[:, sig] * sign[0, j - 1][None, :]
    o, s = choose(t)
    order[0, j], sign[0, j] = o, s
  for i in range(1, h):
    sig = orders[order[i - 1]]  # [w, c]
    a = down[i - 1].swapaxes(-1, -2)  # p (row i) first
    t = np.take_along_axis(a, sig[:, None, :], axis=-1) * sign[i - 1][:, None, :]
    order[i], sign[i] = choose(t)
  # Iterated conditional modes on a checkerboard: each pixel agrees with
  # all four neighbours.
  parity = (np.arange(h)[:, None] + np.arange(w)[None, :]) % 2
  for _ in range(sweeps):
    changed = 0
    for colour_ in (0, 1):
      cells = (parity == colour_).astype(np.float64)
      o, s = choose(votes(np.ones((h, w))))
      upd = parity == colour_
      changed += int(np.sum((o != order) & upd))
      order[upd], sign[upd] = o[upd], s[upd]
      del cells
    if not changed:
      break
  pix = np.arange(h * w).reshape(h, w)
  source = pix[..., None] * c + orders[order]
  mask = np.where(sign < 0, 255, 0).astype(np.uint8)
  return source, mask


def _gray_planes(rep, b, rep_shape, syms, photometric, budget, prior,
                 progress, values_budget=3e8):
  """Grayscale-based EtC: three block puzzles, one per Y/Cb/Cr plane.

  The planes sit side by side, but nothing joins them across their common
  edge, so the blocks are placed as three separate grids of the plane's
  shape; then the prior says which grid is Y, Cb and Cr and how each is
  oriented and inverted (Y first with neutral chroma, then Cb, then Cr).
  """
  n_img, h, w3, _ = rep.shape
  w = w3 // 3
  nb = (h // b) * (w3 // b)
  n_edge = _edge_images(n_img, nb, 1, b, budget)
  pick = np.unique(np.linspace(0, n_img - 1, n_edge).round().astype(int))
  edges = PooledEdges(_pieces_of(rep[pick], b), 127.5, photometric)
  identity = np.arange(h * w3).reshape(rep_shape)
  zero = np.zeros(rep_shape, np.uint8)
  used = np.zeros(nb, bool)
  grids = []
  for _ in range(3):
    placement = solve_blocks(edges, (h // b, w // b), syms, progress, used)
    grids.append(_assembly_map(placement, b, rep_shape, identity, zero,
                               photometric, 255))
  max_images = max(32, int(values_budget // (64 * h * w * 3)))
  sample = rep[np.unique(np.linspace(0, n_img - 1,
                                     min(n_img, max_images)).astype(int))]
  flat = sample.reshape(len(sample), -1)
  options = []  # (grid, source, mask, plane values [n, h, w])
  for g, (src, msk) in enumerate(grids):
    for t in syms:
      s_t = schemes.square_transform(src, t)
      if s_t.shape[:2] != (h, w):
        continue
      m_t = schemes.square_transform(msk, t)
      for _, sign in photometric:
        m_k = m_t ^ np.uint8(255 if sign < 0 else 0)
        values = flat[:, s_t.reshape(-1)] ^ m_k.reshape(-1)
        options.append((g, np.ascontiguousarray(s_t), np.ascontiguousarray(m_k),
                        values.reshape(len(sample), h, w)))
  neutral = np.full((len(sample), h, w), 128, np.uint8)
  # Luma varies far more than chroma in natural images: the grid of the
  # largest spread is Y.
  spread = [np.std(flat[:, src.reshape(-1)].astype(np.float32))
            for src, _ in grids]
  luma = int(np.argmax(spread))
  def rgb_score(planes):
    rgb = np.asarray(plans.ycbcr_to_rgb(np.stack(planes, axis=-1)))
    return float(prior.score(rgb).mean())

  y = max((o for o in options if o[0] == luma),
          key=lambda o: rgb_score([o[3], neutral, neutral]))
  # Chroma edges sit where luma edges are: each chroma grid's orientation
  # is the one whose gradient magnitudes follow Y's (blind to inversion).
  def edginess(v):
    v = v.astype(np.float32)
    return (np.abs(np.diff(v, axis=1))[:, :, :-1]
            + np.abs(np.diff(v, axis=2))[:, :-1]).reshape(-1)
  y_edges = edginess(y[3])
  oriented = {}
  for o in options:
    if o[0] == luma:
      continue
    fit = np.corrcoef(edginess(o[3]), y_edges)[0, 1]
    fit = -np.inf if not np.isfinite(fit) else fit
    key = (o[0], int(o[2].reshape(-1)[0] != 0) if False else None)
    if o[0] not in oriented or fit > oriented[o[0]][0] + 1e-9:
      oriented[o[0]] = (fit, o[1])
  chroma = [g for g in range(3) if g != luma]
  best, best_score = None, -np.inf
  for first, second in (chroma, chroma[::-1]):
    for inv1 in (0, 255):
      for inv2 in (0, 255):
        picks = []
        for g, inv in ((first, inv1), (second, inv2)):
          src = oriented[g][1]
          base = next(o for o in options if o[0] == g
                      and np.array_equal(o[1], src))
          picks.append((g, src, base[2] ^ np.uint8(inv),
                        base[3] ^ np.uint8(inv)))
        score = rgb_score([y[3], picks[0][3], picks[1][3]])
        if score > best_score:
          best, best_score = picks, score
  chosen = [y] + best
  # The planes now agree with each other; the orientation of the whole
  # image is judged in full colour (grey images hide skies and grounds).
  # Inversions are judged jointly too: a grey Y plane's inversion is easy
  # to get wrong with neutral chroma.
  flips = ([(0, 0, 0)] if len(photometric) == 1
           else list(itertools.product((0, 255), repeat=3)))
  best_t, best_flip, best_score = 0, (0, 0, 0), -np.inf
  for t in syms:
    planes = [np.stack([schemes.square_transform(v, t) for v in c[3]])
              for c in chosen]
    if planes[0].shape[1:] != (h, w):
      continue
    for flip in flips:
      score = rgb_score([p ^ np.uint8(f) for p, f in zip(planes, flip)])
      if score > best_score:
        best_t, best_flip, best_score = t, flip, score
  source = np.concatenate([schemes.square_transform(c[1], best_t)
                           for c in chosen], axis=1)
  mask = np.concatenate([schemes.square_transform(c[2], best_t) ^ np.uint8(f)
                         for c, f in zip(chosen, best_flip)], axis=1)
  return source, mask, len(pick)
