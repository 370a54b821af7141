r"""Speed of the same-key ciphertext-only attack on a whole encrypted split.

    python benchmarks/key_recovery_speed.py --imagenette_dir=DATA/imagenette_224 \
        [--scheme=etc] [--limit=N] [--repeats=2]

Reads the Imagenette val split (3,925 images at 224x224), encrypts it under
one key, and times the attack on all ciphertexts (public data: 1,000
training images), alternating with the encryption of the same images as the
baseline measured in the same run (this machine's speed drifts), and
prints the attack's time, the ratio to the encryption and to reading the
images, and how much of the key it recovered.
"""

import argparse
import time

import numpy as np

from etcjax import encryption
from etcjax.evaluation import key_recovery_scoring
from etcjax.evaluation import sources
from etcjax.evaluation.attacks import same_key


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--imagenette_dir", required=True)
  parser.add_argument("--scheme", default="etc")
  parser.add_argument("--limit", type=int, default=None,
                      help="val images (default: all 3,925)")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  start = time.time()
  test = sources.load("imagenette", "val", imagenette_dir=args.imagenette_dir,
                      limit=args.limit, progress=False)
  read = time.time() - start
  public = sources.load("imagenette", "train",
                        imagenette_dir=args.imagenette_dir, limit=1000,
                        progress=False)
  key = encryption.generate_key()
  encrypted = sources.encrypt(test, key, args.scheme)  # warm-up (compile)
  shape = test.images.shape[1:]
  enc_times, attack_times = [], []
  for _ in range(args.repeats):  # A B A B
    start = time.time()
    encrypted = sources.encrypt(test, key, args.scheme)
    enc_times.append(time.time() - start)
    start = time.time()
    recovered = same_key.recover_key(encrypted, scheme=args.scheme,
                                     image_shape=shape,
                                     public_plain=public.images)
    attack_times.append(time.time() - start)
  truth = encryption.make_plan(key, args.scheme, shape)
  score = key_recovery_scoring.score(truth, recovered, test.images, encrypted,
                                     mirror_images=200)
  attack, enc = np.median(attack_times), np.median(enc_times)
  print(f"{args.scheme} on {len(test)} Imagenette val images "
        f"({recovered.edge_images} used for the pooled edges)")
  print(f"reading the images: {read:.1f} s")
  print(f"encrypting them (baseline, median of {args.repeats}): {enc:.2f} s")
  print(f"ciphertext-only attack (median of {args.repeats}): {attack:.1f} s "
        f"= {attack / enc:.1f}x encrypting, {attack / read:.2f}x reading")
  print(f"recovered: neighbours {score.neighbours:.3f}, blocks exact "
        f"{score.blocks_exact:.3f}, values exact {score.values_exact:.3f}, "
        f"SSIM {score.ssim.mean():.3f} ({score.ssim_up_to_mirror:.3f} up to "
        "the global left-right mirror)")


if __name__ == "__main__":
  main()
