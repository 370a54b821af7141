"""Brute force: the size of the search space an adversary would enumerate.

Every scheme's transforms are chosen from the 256-bit secret key, so a
brute-force search tries at most min(2^256, number of distinct transforms)
candidates. `Scheme.key_space_bits` counts the transforms (e.g. for EtC:
log2(n!) block orders plus 3 + 1 + log2 6 bits per block). The number says
nothing about smarter attacks: a jigsaw solver never enumerates block
orders, and FR-Attack never enumerates inversions.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from etcjax import encryption
from etcjax.encryption import schemes
from etcjax.evaluation import outputs
from etcjax.evaluation import tables

KEY_BITS = 256  # etcjax keys are 32 bytes.
# About 2^64 candidates is within reach of large computations; far fewer
# (like EtC's 2^31 transforms of a 32x32 image) are seconds to hours.
FEASIBLE_BITS = 64
_SIZE_NAMES = {32: "cifar10", 224: "imagenette, ViT input"}


def key_space_bits(scheme: str, image_shape: Tuple[int, int, int],
                   block_size: Optional[int] = None) -> float:
  """log2 of the number of distinct transforms of a scheme.

  Args:
    scheme: a scheme name.
    image_shape: `(H, W, 3)` plain image shape.
    block_size: block side; the scheme's default when None.

  Returns:
    Bits (float, may exceed 256).
  """
  spec = encryption.get_scheme(scheme)
  block_size = spec.default_block_size if block_size is None else block_size
  schemes.check_geometry(scheme, image_shape, block_size)
  return float(spec.key_space_bits(tuple(image_shape), block_size))


def table(scheme_names: Sequence[str],
          image_shapes: Sequence[Tuple[str, Tuple[int, int, int]]]) -> tables.Table:
  """The brute-force table over schemes and image sizes.

  Args:
    scheme_names: schemes (default block sizes).
    image_shapes: `(dataset name, (H, W, 3))` pairs.

  Returns:
    A table with one row per (dataset, scheme).
  """
  result = tables.Table(
      "Brute force: search space per scheme and image size",
      ["dataset", "image size", "scheme", "block size", "transform space (bits)",
       "effective key space (bits)", "brute force"],
      formats={"transform space (bits)": ".1f",
               "effective key space (bits)": ".1f"},
      notes=[f"Effective = min(transform space, {KEY_BITS}-bit key). "
             f"Below {FEASIBLE_BITS} bits a search is feasible on one machine "
             "(given a test of the right answer, e.g. smoothness of the "
             "decrypted image); 128 bits or more is beyond any brute force. "
             "The attacks show what smarter adversaries recover without "
             "searching at all."])
  for dataset, shape in image_shapes:
    for name in scheme_names:
      spec = encryption.get_scheme(name)
      bits = key_space_bits(name, shape)
      effective = min(bits, float(KEY_BITS))
      result.add(dataset, f"{shape[0]}x{shape[1]}", name, spec.default_block_size,
                 bits, effective,
                 "FEASIBLE" if effective < FEASIBLE_BITS else
                 "infeasible" if effective >= 128 else "costly")
  return result


def run(out_dir: str, image_sizes: Sequence[int] = (32, 224),
        scheme_names: Optional[Sequence[str]] = None,
        overwrite: bool = False) -> str:
  """Writes the brute-force table to `out_dir/brute_force/`.

  Args:
    out_dir: the run folder.
    image_sizes: square image sides (32: CIFAR-10, 224: Imagenette/ViT).
    scheme_names: schemes (all registered when None).
    overwrite: replace existing results.

  Returns:
    The result folder.
  """
  scheme_names = list(scheme_names or encryption.SCHEMES)
  shapes = [(_SIZE_NAMES.get(int(s), "–"), (int(s), int(s), 3))
            for s in image_sizes]
  result = table(scheme_names, shapes)  # Raises on bad sizes before writing.
  output = outputs.TaskOutput(out_dir, "brute_force", None, overwrite,
                              meta=dict(image_sizes=list(image_sizes),
                                        schemes=scheme_names))
  with output as folder:
    result.write(folder, "brute_force")
  return output.path
