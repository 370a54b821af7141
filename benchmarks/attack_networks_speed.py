r"""Training speed of the learned attacks' networks on pixel cells vs pixels.

Times one optimizer step of the ITN attack (U-Net, L1) and of the GAN
attack (CycleGAN: two U-Nets, two PatchGAN discriminators) with the
networks on single pixels (`space_to_depth=1`, the classic layout) and on
S x S pixel cells (the default S = 2), alternating the variants round-robin
in one process so machine load affects them alike. Prints median ms per
step and the speed-up of cells over pixels. Not a test; asserts nothing.

    python benchmarks/attack_networks_speed.py [--batch 64 --width 32 \
        --image 32 --reps 5 --cells 1,2]
"""

import argparse
import time

import jax
import numpy as np

from etcjax.evaluation.attacks import gan_attack
from etcjax.evaluation.attacks import itn_attack
from etcjax.evaluation.attacks import networks
from etcjax.evaluation.attacks import threat_model


def _itn_step(size, shape, batch):
  module = networks.generator(size, shape)
  params = module.init(jax.random.key(0), np.zeros((1,) + shape, np.float32))
  tx, step_fn = itn_attack.trainer(module, size.learning_rate)
  step = jax.jit(step_fn, donate_argnums=0)
  state = [(params["params"], tx.init(params["params"]))]

  def run():
    state[0], metrics = step(state[0], {"encrypted": batch, "plain": batch})
    return metrics["l1"]

  return run


def _gan_step(size, shape, batch):
  gen = networks.generator(size, shape)
  disc = networks.discriminator(size, shape)
  dummy = np.zeros((1,) + shape, np.float32)
  keys = jax.random.split(jax.random.key(0), 4)
  g = {n: gen.init(k, dummy)["params"]
       for n, k in zip(("to_plain", "to_encrypted"), keys[:2])}
  d = {n: disc.init(k, dummy)["params"]
       for n, k in zip(("plain", "encrypted"), keys[2:])}
  tx, step_fn = gan_attack.trainer(gen, disc, size.learning_rate)
  step = jax.jit(step_fn, donate_argnums=0)
  state = [(g, d, tx.init(g), tx.init(d))]

  def run():
    state[0], metrics = step(state[0], {"encrypted": batch, "plain": batch})
    return metrics["generator"]

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--levels", type=int, default=3)
  parser.add_argument("--image", type=int, default=32, help="image side")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--cells", default="1,2",
                      help="space_to_depth values to compare; the first is "
                      "the baseline")
  args = parser.parse_args()
  cells = [int(v) for v in args.cells.split(",")]
  shape = (args.image, args.image, 3)
  batch = np.random.default_rng(0).integers(0, 256, (args.batch,) + shape,
                                            np.uint8)
  print(f"jax {jax.__version__} on {jax.default_backend()}; batch "
        f"{args.batch}, width {args.width}, {args.levels} levels, "
        f"{args.image}x{args.image} images")
  for name, make in (("ITN", _itn_step), ("GAN", _gan_step)):
    fns = {}
    for s in cells:
      size = threat_model.TrainingSize(steps=1, batch_size=args.batch,
                                       width=args.width, levels=args.levels,
                                       space_to_depth=s)
      fns[s] = make(size, shape, batch)
      start = time.perf_counter()
      jax.block_until_ready(fns[s]())
      print(f"{name} cells {s}x{s}: first step (compile) "
            f"{time.perf_counter() - start:.1f} s")
    times = {s: [] for s in cells}
    for _ in range(args.reps):
      for s, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times[s].append(time.perf_counter() - start)
    base = float(np.median(times[cells[0]]))
    for s in cells:
      ms = 1e3 * float(np.median(times[s]))
      print(f"{name} cells {s}x{s}: {ms:8.1f} ms/step, "
            f"{base * 1e3 / ms:5.2f}x the speed of cells {cells[0]}x{cells[0]}")


if __name__ == "__main__":
  main()
