"""Jigsaw-puzzle-solver attack on block-scrambled images (Chuman et al.).

Block scrambling moves whole blocks, and EtC's other steps transform each
block as a whole (one of 8 rotations/flips, inversion, one of 6 colour
orders), so pixels along a block's edge still continue the pixels of its
original neighbours. The solver reassembles the image from those edges, in
the spirit of Gallagher (2012) and Paikin & Tal (2015):

1. Pieces are the encrypted image's blocks. Each piece can take every
   variant the scheme's steps allow: 8 square symmetries x 12 photometric
   transforms for full EtC (2 for grayscale-based EtC: inversion only).
2. Dissimilarity of two pieces side by side is the Mahalanobis gradient
   compatibility (Gallagher 2012): how unlikely each piece's boundary
   gradients make the step to the other; it is invariant to applying one
   photometric transform to both pieces, and computed for all variants at
   once with dot products.
3. Greedy placement: start from the piece with the most distinctive best
   matches; repeatedly fill the free cell (next to placed pieces, within the
   known image size) whose best (piece, variant) beats the best other piece
   by the largest margin, weighted up for cells with more placed
   neighbours (chosen on Imagenette training images).
4. The result is correct up to one global transform of the whole image
   (rotation/flip, inversion, colour order); the adversary picks it with its
   prior of the data distribution (`priors.ImagePrior`).

The adversary knows the scheme, its steps and the image size, not the key.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tqdm

from etcjax import encryption
from etcjax.encryption import plans
from etcjax.encryption import schemes
from etcjax.evaluation import visual_metrics
from etcjax.evaluation.attacks import priors
from etcjax.evaluation.attacks import threat_model

JIGSAW_SCHEMES = ("etc", "etc_gray")


@dataclasses.dataclass(frozen=True)
class Assembly:
  """A solved puzzle.

  Attributes:
    grid: int `[gh, gw]`, the index (raster order in the encrypted image)
      of the piece placed in every cell of the output.
    image: uint8 `[H', W', C']`, the reassembled image in the encrypted
      representation's layout (RGB for EtC, `[H, 3W, 1]` for etc_gray).
  """

  grid: np.ndarray
  image: np.ndarray


def _pieces(image: np.ndarray, b: int) -> np.ndarray:
  h, w, c = image.shape
  return image.reshape(h // b, b, w // b, b, c).transpose(0, 2, 1, 3, 4).reshape(
      -1, b, b, c)


def _photometric_float(x: np.ndarray, transform: priors.Photometric) -> np.ndarray:
  order, mask = transform
  x = x[..., list(order)]
  return np.where(np.asarray(mask) > 0, 255.0 - x, x)


def _mgc_features(outer: np.ndarray, inner: np.ndarray
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """One edge's half of the Mahalanobis gradient compatibility (Gallagher).

  The gradients across a piece's edge (outer - inner, B rows of C values)
  have mean mu and covariance S. A neighbour's edge y continues it when
  y - outer - mu is small in the metric S^-1, summed over the B rows. That
  sum is bilinear in per-edge features: `own . other'` (with the other
  edge's `other'`) is this edge's term, `other . own'` the other edge's.

  Args:
    outer, inner: float64 `[n, B, C]`, an edge's outermost and next rows.

  Returns:
    `(own, other)`, float64 `[n, C^2 + B C + 1]` each.
  """
  n, b, c = outer.shape
  grad = outer - inner
  mu = grad.mean(axis=1)
  centred = grad - mu[:, None]
  # The identity regularises the covariance of flat edges (Gallagher adds
  # dummy gradients to the same end).
  cov = np.einsum("nbi,nbj->nij", centred, centred) / b + np.eye(c)
  prec = np.linalg.inv(cov)
  predicted = outer + mu[:, None]
  weighted = np.einsum("nij,nbj->nbi", prec, predicted)
  constant = np.einsum("nbi,nbi->n", predicted, weighted)
  own = np.concatenate([prec.reshape(n, -1), -2 * weighted.reshape(n, -1),
                        constant[:, None]], axis=1)
  scatter = np.einsum("nbi,nbj->nij", outer, outer)
  other = np.concatenate([scatter.reshape(n, -1), outer.reshape(n, -1),
                          np.ones((n, 1))], axis=1)
  return own, other


class _EdgeTables:
  """Edge features of every (piece, symmetry, photometric) variant.

  The dissimilarity of variant x on the left of variant y is the Mahalanobis
  gradient compatibility (MGC, Gallagher 2012) in both directions,
  `right_l[x] . left_r[y]`; of x above y, `bottom_l[x] . top_r[y]`. Rows are
  variants, indexed `(piece * S + symmetry) * K + photometric`.
  """

  def __init__(self, pieces: np.ndarray, symmetries: Sequence[int],
               transforms: Sequence[priors.Photometric]):
    variants = np.stack([np.stack([schemes.square_transform(p, t)
                                   for t in symmetries]) for p in pieces])
    variants = np.stack([_photometric_float(variants.astype(np.float64), t)
                         for t in transforms], axis=2)  # [n, S, K, B, B, C]
    b, c = variants.shape[-2:]
    v = variants.reshape((-1, b, b, c))
    right = _mgc_features(v[:, :, -1], v[:, :, -2])
    left = _mgc_features(v[:, :, 0], v[:, :, 1])
    bottom = _mgc_features(v[:, -1], v[:, -2])
    top = _mgc_features(v[:, 0], v[:, 1])
    # float32 halves the memory traffic of the matrix-vector products that
    # dominate the solver's time; distances keep ~6 significant digits.
    def table(a, b):
      return np.concatenate([a, b], axis=1).astype(np.float32)
    self.right_l = table(right[0], right[1])
    self.left_r = table(left[1], left[0])
    self.bottom_l = table(bottom[0], bottom[1])
    self.top_r = table(top[1], top[0])

  def distances(self, mine: str, variant: int, theirs: str) -> np.ndarray:
    """Dissimilarity between one variant's edge and every variant's edge.

    Args:
      mine: the table of the placed variant's edge facing the neighbour.
      variant: the placed variant's row.
      theirs: the table of the candidates' facing edges.

    Returns:
      float64 `[n * S * K]`, >= 0.
    """
    d = getattr(self, theirs) @ getattr(self, mine)[variant]
    return np.maximum(d, 0.0).astype(np.float64)


# Neighbour offsets -> (table of the placed piece's facing edge, table of
# the candidates' facing edges).
_SIDES = {
    (0, 1): ("right_l", "left_r"),
    (0, -1): ("left_r", "right_l"),
    (1, 0): ("bottom_l", "top_r"),
    (-1, 0): ("top_r", "bottom_l"),
}


class _Frontier:
  """Free cells next to placed pieces, with their candidates' scores."""

  def __init__(self, n: int, per_piece: int):
    self.n, self.per_piece = n, per_piece
    self.totals: Dict[Tuple[int, int], np.ndarray] = {}
    self.counts: Dict[Tuple[int, int], int] = {}
    # cell -> (confidence, best variant, best piece, runner-up piece),
    # recomputed when the cell's scores change or either piece gets used.
    self.cache: Dict[Tuple[int, int], Tuple[float, int, int, int]] = {}

  def add(self, cell, distances: np.ndarray) -> None:
    self.totals[cell] = self.totals.get(cell, 0.0) + distances
    self.counts[cell] = self.counts.get(cell, 0) + 1
    self.cache.pop(cell, None)

  def remove(self, cell) -> None:
    for table in (self.totals, self.counts, self.cache):
      table.pop(cell, None)

  def best(self, cell, used: np.ndarray) -> Tuple[float, int]:
    """(confidence, variant) of a cell's best unused candidate."""
    cached = self.cache.get(cell)
    if cached is not None and not used[cached[2]] and not (
        cached[3] >= 0 and used[cached[3]]):
      return cached[:2]
    per = (self.totals[cell] / self.counts[cell]).reshape(self.n, self.per_piece)
    piece_best = per.min(axis=1)
    piece_best[used] = np.inf
    first = int(np.argmin(piece_best))
    v1 = piece_best[first]
    piece_best[first] = np.inf
    second = int(np.argmin(piece_best))
    v2 = piece_best[second]
    # Paikin & Tal: trust a placement by how much better the best piece
    # fits than the runner-up.
    confidence = 1.0 - v1 / v2 if np.isfinite(v2) and v2 > 0 else 1.0
    variant = first * self.per_piece + int(np.argmin(per[first]))
    self.cache[cell] = (confidence, variant, first,
                        second if np.isfinite(v2) else -1)
    return confidence, variant


def place_greedily(frontier: "_Frontier", placed: Dict, total: int,
                   used: np.ndarray, fits, place, solver: str,
                   on_place=None) -> None:
  """Grows a puzzle from its placed pieces until `total` cells are filled.

  Each round places the most confident (cell, variant) of the frontier;
  cells that no longer fit the puzzle's box are dropped (the box only grows,
  so they never fit again). Shared by the image-by-image solver and the
  same-key block solver, which differ only in how they score edges.

  Args:
    frontier: the `_Frontier` of candidate cells and their variant scores.
    placed: cell -> variant index, filled by `place`.
    total: the number of cells of the finished puzzle.
    used: bool `[n]`, pieces already placed (read by `frontier.best`).
    fits: cell -> whether placing there keeps the box within the grid.
    place: (cell, variant) -> None, places a piece and extends the frontier.
    solver: the solver's name, for the error of an impossible state.
    on_place: optional callback after each placement (progress bars).
  """
  while len(placed) < total:
    best = None
    for cell in list(frontier.totals):
      if not fits(cell):
        frontier.remove(cell)
        continue
      confidence, variant = frontier.best(cell, used)
      # Cells enclosed by more placed pieces are judged on more evidence.
      priority = confidence * (1 + 0.5 * (frontier.counts[cell] - 1))
      if best is None or priority > best[0]:
        best = (priority, cell, variant)
    if best is None:
      raise AssertionError(f"{solver} found no free cell; this is a bug")
    place(best[1], best[2])
    if on_place is not None:
      on_place()


def solve(encrypted: np.ndarray, block_size: int, symmetries: Sequence[int],
          transforms: Sequence[priors.Photometric],
          choose_global: Optional[Callable[[List[np.ndarray]], int]] = None
          ) -> Assembly:
  """Reassembles one block-scrambled image.

  Args:
    encrypted: uint8 `[H', W', C']`, H' and W' multiples of `block_size`.
    block_size: block side B.
    symmetries: square symmetries each block may have undergone (`[0]`
      without rotation/flip).
    transforms: photometric transforms each block may have undergone
      (identity first).
    choose_global: given the candidate images (the assembly under every
      global transform), returns the index of the one to keep; the first
      candidate (no global transform) when None.

  Returns:
    The `Assembly`.
  """
  encrypted = np.asarray(encrypted)
  h, w, c = encrypted.shape
  b = block_size
  if h % b or w % b:
    raise ValueError(
        f"image {h}x{w} is not a multiple of the block size {b}")
  gh, gw = h // b, w // b
  pieces = _pieces(encrypted, b)
  n, n_ph = len(pieces), len(transforms)
  per_piece = len(symmetries) * n_ph
  tables = _EdgeTables(pieces, symmetries, transforms)
  transposable = any(t % 2 for t in symmetries) and gh != gw
  shapes = [(gh, gw)] + ([(gw, gh)] if transposable else [])

  placed: Dict[Tuple[int, int], int] = {}  # cell -> variant index
  used = np.zeros(n, bool)
  frontier = _Frontier(n, per_piece)
  box = [0, 0, 0, 0]  # row min, row max, column min, column max

  def place(cell, variant):
    placed[cell] = variant
    used[variant // per_piece] = True
    frontier.remove(cell)
    box[:] = [min(box[0], cell[0]), max(box[1], cell[0]),
              min(box[2], cell[1]), max(box[3], cell[1])]
    for (dr, dc), (mine, theirs) in _SIDES.items():
      other = (cell[0] + dr, cell[1] + dc)
      if other not in placed:
        frontier.add(other, tables.distances(mine, variant, theirs))

  def fits(cell):
    rows = max(box[1], cell[0]) - min(box[0], cell[0]) + 1
    cols = max(box[3], cell[1]) - min(box[2], cell[1]) + 1
    return any(rows <= sh and cols <= sw for sh, sw in shapes)

  place((0, 0), _start_piece(tables, n, per_piece) * per_piece)
  place_greedily(frontier, placed, n, used, fits, place, "jigsaw solver")

  r0, c0 = box[0], box[2]
  grid = np.zeros((box[1] - r0 + 1, box[3] - c0 + 1), np.int64)
  frame = np.zeros((grid.shape[0] * b, grid.shape[1] * b, c), np.uint8)
  for (r, col), variant in placed.items():
    piece, rest = divmod(variant, per_piece)
    s, k = divmod(rest, n_ph)
    grid[r - r0, col - c0] = piece
    block = schemes.square_transform(pieces[piece], symmetries[s])
    frame[(r - r0) * b:(r - r0 + 1) * b, (col - c0) * b:(col - c0 + 1) * b] = (
        priors.apply_photometric(block, transforms[k]))

  options = global_variants(Assembly(grid, frame), symmetries, transforms,
                            (gh, gw))
  pick = choose_global([a.image for a in options]) if choose_global else 0
  return options[pick]


def global_variants(assembly: Assembly, symmetries: Sequence[int],
                    transforms: Sequence[priors.Photometric],
                    grid_shape: Tuple[int, int]) -> List[Assembly]:
  """The assembly under every global transform that gives the image's shape.

  Args:
    assembly: an assembly (in any orientation).
    symmetries: square symmetries the blocks may have undergone.
    transforms: photometric transforms the blocks may have undergone.
    grid_shape: `(gh, gw)` of the encrypted image's block grid.

  Returns:
    Assemblies: every shape-preserving symmetry of the whole image times
    every photometric transform, the assembly itself first when it has the
    right shape.
  """
  options = []
  for t in symmetries:
    grid = schemes.square_transform(assembly.grid, t)
    if grid.shape != tuple(grid_shape):
      continue
    turned = np.ascontiguousarray(schemes.square_transform(assembly.image, t))
    for transform in transforms:
      options.append(Assembly(np.ascontiguousarray(grid),
                              priors.apply_photometric(turned, transform)))
  return options


def _start_piece(tables: _EdgeTables, n: int, per_piece: int) -> int:
  """The piece (in its identity variant) with the most distinctive edges."""
  starts = np.arange(n) * per_piece
  total = np.zeros(n)
  for mine, theirs in _SIDES.values():
    d = getattr(tables, mine)[starts] @ getattr(tables, theirs).T
    per = np.maximum(d, 0).reshape(n, n, per_piece).min(axis=2)
    per[np.arange(n), np.arange(n)] = np.inf
    two = np.sort(per, axis=1)[:, :2]
    total += 1.0 - two[:, 0] / np.maximum(two[:, 1], 1e-9)
  return int(np.argmax(total))


def variants_of(scheme: str, steps: Sequence[str], channels: int
                ) -> Tuple[List[int], List[priors.Photometric]]:
  """Block variants a scheme's steps allow: (symmetries, photometric)."""
  symmetries = (list(range(schemes.NUM_SQUARE_TRANSFORMS))
                if "rotate_flip" in steps else [0])
  transforms = priors.photometric_transforms(
      channels, colour="channel" in steps, inversion="negpos" in steps,
      per_channel_inversion=False)
  return symmetries, transforms


def source_blocks(plan: plans.Plan) -> np.ndarray:
  """Where every encrypted block came from, from the plan (ground truth).

  Args:
    plan: an EtC or grayscale-based EtC plan (one key for all images).

  Returns:
    int64 `[nb]`: for every block of the encrypted representation (raster
    order), the raster index of its source block.
  """
  h, w, c = plan.encrypted_shape
  b = plan.block_size
  tops = np.arange(h // b)[:, None] * b * w + np.arange(w // b)[None, :] * b
  source = plan.gather[(tops.reshape(-1)) * c]
  y, x = source // (w * c), (source // c) % w
  return (y // b) * (w // b) + x // b


@dataclasses.dataclass(frozen=True)
class Accuracy:
  """How well assemblies match the truth, per image.

  Attributes:
    position: share of cells holding the right block, as output.
    position_up_to_global: the same under the best global rotation/flip
      (chosen with the truth: what a perfect prior would achieve).
    neighbours: share of adjacent cell pairs holding truly adjacent blocks
      (in the right relative position), under the best global rotation/flip.
    exact_blocks: share of cells holding the right block with the plain
      block's pixels (right place, orientation, inversion and colour
      order).
  """

  position: np.ndarray
  position_up_to_global: np.ndarray
  neighbours: np.ndarray
  exact_blocks: np.ndarray


def score(assemblies: Sequence[Assembly], truth: np.ndarray,
          plain_rep: np.ndarray, block_size: int,
          symmetries: Sequence[int]) -> Accuracy:
  """Scores assemblies against the truth.

  Args:
    assemblies: one per image.
    truth: int `[nb]` from `source_blocks`.
    plain_rep: uint8 `[N, H', W', C']`, the plain images in the encrypted
      representation's layout.
    block_size: B.
    symmetries: the global symmetries the solver could not tell apart.

  Returns:
    Per-image `Accuracy`.
  """
  pos, pos_g, nbr, exact = [], [], [], []
  for assembly, plain in zip(assemblies, plain_rep):
    gh, gw = assembly.grid.shape
    target = np.arange(gh * gw).reshape(gh, gw)
    src = truth[assembly.grid]
    pos.append(np.mean(src == target))
    best_pos, best_nbr = 0.0, 0.0
    for t in symmetries:
      turned = schemes.square_transform(src, t)
      if turned.shape != (gh, gw):
        continue
      best_pos = max(best_pos, float(np.mean(turned == target)))
      right = (turned[:, 1:] == turned[:, :-1] + 1) & (turned[:, :-1] % gw != gw - 1)
      down = turned[1:, :] == turned[:-1, :] + gw
      pairs = right.size + down.size
      best_nbr = max(best_nbr, (right.sum() + down.sum()) / max(pairs, 1))
    pos_g.append(best_pos)
    nbr.append(best_nbr)
    # Right piece and right pixels (flat blocks of equal content elsewhere
    # do not count).
    same = np.all(_pieces(assembly.image, block_size)
                  == _pieces(plain, block_size), axis=(1, 2, 3))
    exact.append(np.mean(same & (src == target).reshape(-1)))
  return Accuracy(*(np.asarray(x, np.float64) for x in (pos, pos_g, nbr, exact)))


def run(context: threat_model.AttackContext,
        prior: Optional[priors.ImagePrior] = None) -> List[Assembly]:
  """The jigsaw attack on every attacked image.

  Args:
    context: the attack context; scheme in `JIGSAW_SCHEMES`.
    prior: the adversary's prior (fitted to `context.public_plain` when
      None).

  Returns:
    One `Assembly` per image (`visual_metrics.as_rgb` of their images gives
    the RGB reconstructions).
  """
  if context.scheme not in JIGSAW_SCHEMES:
    raise ValueError(
        f"the jigsaw attack applies to block-scrambling schemes "
        f"{list(JIGSAW_SCHEMES)}, not {context.scheme!r}")
  steps = context.steps_on()
  channels = context.encrypted_shape[-1]
  symmetries, transforms = variants_of(context.scheme, steps, channels)
  prior = prior or priors.ImagePrior.fit(context.public_plain)
  def choose(candidates):
    return priors.resolve_global(
        candidates, prior,
        lambda x: visual_metrics.as_rgb(x, context.representation))
  return [solve(image, context.block_size, symmetries, transforms, choose)
          for image in tqdm.tqdm(context.encrypted, desc=f"jigsaw {context.scheme}",
                                 unit="img", leave=False,
                                 disable=not context.progress)]
