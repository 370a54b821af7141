r"""Speed of the evaluation suite's heavy parts, per image, on this machine.

Times what decides how long `python -m etcjax.evaluate ... --size=full`
runs: the jigsaw solver (EtC: 4 pieces at 32x32, 196 at 224x224;
grayscale-based EtC: 48 and 2352), the advanced FR-Attack on PE, SSIM and
LPIPS, on real CIFAR-10 and Imagenette images.

    python benchmarks/evaluation_speed.py --data_dir=/path/to/data \
        [--images=4]

Prints wall-clock and process CPU seconds per image (CPU time is less
disturbed by other jobs on a shared machine).
"""

import argparse
import os
import time

import numpy as np

from etcjax import encryption
from etcjax.evaluation import sources
from etcjax.evaluation import visual_metrics
from etcjax.evaluation.attacks import fr_attack
from etcjax.evaluation.attacks import jigsaw
from etcjax.evaluation.attacks import priors
from etcjax.evaluation.attacks import threat_model

KEY = bytes(range(32))


def _time(fn, n, warm_up):
  if warm_up:  # Compilation (LPIPS) is not per-image work.
    fn()
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def _context(scheme, images, public):
  plan = encryption.make_plan(KEY, scheme, images.shape[1:])
  return threat_model.AttackContext(
      scheme=scheme, block_size=plan.block_size, steps=None,
      image_shape=images.shape[1:], encrypted_shape=plan.encrypted_shape,
      representation=plan.representation,
      encrypted=np.asarray(encryption.apply(plan, images)),
      public_plain=public, public_encrypted=public[:0], training=None,
      progress=False)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default=os.environ.get("ETCJAX_DATA_DIR"),
                      help="folder with tensorflow_datasets/ and "
                      "imagenette_224/ (default: $ETCJAX_DATA_DIR)")
  parser.add_argument("--images", type=int, default=4,
                      help="images per measurement")
  args = parser.parse_args()
  if not args.data_dir:
    parser.error("pass --data_dir or set ETCJAX_DATA_DIR")
  data = {
      "cifar10": sources.load(
          "cifar10", "test", limit=args.images,
          data_dir=os.path.join(args.data_dir, "tensorflow_datasets")).images,
      "imagenette": sources.load(
          "imagenette", "val", limit=args.images,
          imagenette_dir=os.path.join(args.data_dir, "imagenette_224")).images,
  }
  lpips = visual_metrics.lpips_model()
  print(f"{'dataset':<11} {'what':<28} {'wall s/img':>10} {'cpu s/img':>10}")
  for name, images in data.items():
    n = len(images)
    prior = priors.ImagePrior.fit(images)
    rows = []
    for scheme in ("etc", "etc_gray"):
      context = _context(scheme, images, images)
      rows.append((f"jigsaw {scheme}",
                   lambda c=context: jigsaw.run(c, prior)))
    context = _context("pe", images, images)
    rows.append(("FR advanced pe", lambda: fr_attack.advanced(context, prior)))
    shuffled = images[::-1].copy()
    rows.append(("SSIM", lambda: visual_metrics.ssim(images, shuffled)))
    rows.append(("LPIPS alexnet", lambda: lpips(images, shuffled)))
    for what, fn in rows:
      wall, cpu = _time(fn, n, warm_up=what.startswith("LPIPS"))
      print(f"{name:<11} {what:<28} {wall:>10.4f} {cpu:>10.4f}")


if __name__ == "__main__":
  main()
