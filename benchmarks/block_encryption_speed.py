r"""On-device EtC: the block formulation against the plan's flat gather.

Times, alternating A B A B in the same run (a shared CPU drifts), the jitted
`plans.apply` flat gather + XOR (A) and `block_apply.apply_blocks` (block
gather, per-block symmetry and colour selects, XOR; B) on uint8 batches,
checks that both give identical bytes, and prints per-round ratios B / A
(time; < 1 means the block formulation is faster) and their median and
min-max. `block_apply.BLOCK_BACKENDS` says where `plans.apply` uses blocks.

    python benchmarks/block_encryption_speed.py [--rounds 7] [--min_seconds 1]
    python benchmarks/block_encryption_speed.py --tiny   # seconds; a check
"""

import argparse
import statistics
import time

import jax
import numpy as np

from etcjax import encryption
from etcjax.encryption import block_apply
from etcjax.encryption import plans

# (batch, height, width, block size): ViT/Imagenette, CIFAR-10 at 16 and 4.
CONFIGS = ((128, 224, 224, 16), (1024, 32, 32, 16), (1024, 32, 32, 4))
TINY_CONFIGS = ((4, 32, 32, 16), (4, 32, 32, 4))


def _timer(fn, images, min_seconds):
  """Seconds per call of fn(images), over at least min_seconds."""
  calls, start = 0, time.perf_counter()
  while True:
    out = fn(images)
    calls += 1
    jax.block_until_ready(out)
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds:
      return elapsed / calls


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--min_seconds", type=float, default=1.0)
  parser.add_argument("--tiny", action="store_true",
                      help="small batches, 2 short rounds (checks, no speed)")
  args = parser.parse_args(argv)
  configs = CONFIGS
  if args.tiny:
    configs, args.rounds, args.min_seconds = TINY_CONFIGS, 2, 0.01
  print(f"backend {jax.default_backend()}; ratio = block time / gather time")
  key = bytes(range(32))
  blocks_fn = jax.jit(block_apply.apply_blocks,
                      static_argnames=("image_shape", "block_size"))
  flat_fn = jax.jit(lambda p, x: plans._encrypt_flat(  # pylint: disable=protected-access
      p.gather, p.xor, x, representation=p.representation,
      out_shape=p.encrypted_shape))
  for n, h, w, b in configs:
    plan = jax.device_put(encryption.make_plan(key, "etc", (h, w, 3), b))
    images = jax.device_put(np.random.default_rng(0).integers(
        0, 256, (n, h, w, 3), np.uint8))
    gather = lambda x, plan=plan: flat_fn(plan, x)
    block = lambda x, plan=plan, b=b: blocks_fn(
        plan.gather, plan.xor, x, image_shape=(h, w, 3), block_size=b)
    np.testing.assert_array_equal(np.asarray(block(images)),
                                  np.asarray(gather(images)))
    ratios, times = [], {"gather": [], "blocks": []}
    for _ in range(args.rounds):
      a = _timer(gather, images, args.min_seconds)
      bt = _timer(block, images, args.min_seconds)
      times["gather"].append(a)
      times["blocks"].append(bt)
      ratios.append(bt / a)
    print(f"[{n}, {h}, {w}, 3] b={b}: gather "
          f"{statistics.median(times['gather']) * 1e3:7.2f} ms, blocks "
          f"{statistics.median(times['blocks']) * 1e3:7.2f} ms; ratio median "
          f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max "
          f"{max(ratios):.2f}); rounds: "
          + " ".join(f"{r:.2f}" for r in ratios), flush=True)


if __name__ == "__main__":
  main()
