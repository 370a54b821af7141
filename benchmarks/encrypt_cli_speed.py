r"""Speed of the client CLI's encrypt path, with and without encryption.

Runs the code path of `python -m etcjax.encrypt encrypt` end to end (read
and decode the source JPEGs, encrypt in chunks with the jitted plan, encode
as JPEG, write atomically) on the Imagenette folder, and the very same path
with encryption switched off (`encrypt_fn=None`), alternating the two
(A B B A ...) in one process so that machine load affects both alike.

    python benchmarks/encrypt_cli_speed.py --data_dir=/path/to/data \
        [--split=val --limit=600 --rounds=3 --workers=2 --scheme=etc]

Prints images/s (wall clock) of both and their ratio (target: encryption
at most 10% slower), and the process CPU time per image (all threads),
which other jobs on a shared machine disturb far less than wall-clock
throughput; plus the output sizes of both.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

from etcjax import encrypt as cli
from etcjax import encryption
from etcjax.data import encrypted_writer
from etcjax.data import plain_sources


def _dir_bytes(root):
  return sum(os.path.getsize(os.path.join(folder, f))
             for folder, _, files in os.walk(root) for f in files)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default=os.environ.get("ETCJAX_DATA_DIR"),
                      help="folder holding imagenette_224/ (default: "
                      "$ETCJAX_DATA_DIR)")
  parser.add_argument("--split", default="val")
  parser.add_argument("--limit", type=int, default=600,
                      help="images per timed run")
  parser.add_argument("--rounds", type=int, default=3,
                      help="timed runs of each mode")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--scheme", default="etc")
  parser.add_argument("--quality", type=int, default=85)
  parser.add_argument("--subsampling", default="4:2:0")
  args = parser.parse_args()
  if not args.data_dir:
    parser.error("pass --data_dir or set ETCJAX_DATA_DIR")
  root = os.path.join(args.data_dir, "imagenette_224")

  source = plain_sources.open_source(f"folder:{root}", [args.split], limit=args.limit)
  split = source.splits[0]
  image_shape = split.read(0).shape
  # A throwaway key that lives in memory only.
  key = encryption.generate_key()
  encrypt_fn = cli.plan_encrypt_fn(key, args.scheme, image_shape, None
                                   if args.scheme != "etc" else 16, None)
  modes = {"encrypted": encrypt_fn, "plain": None}

  def run_once(mode):
    out = tempfile.mkdtemp(prefix=f"etcjax_bench_{mode}_")
    try:
      start, cpu_start = time.perf_counter(), time.process_time()
      result = encrypted_writer.write_split(
          split, out, source.label_names, image_shape, modes[mode], "jpeg",
          args.quality, args.subsampling, workers=args.workers,
          progress=False)
      seconds = time.perf_counter() - start
      cpu_ms = (time.process_time() - cpu_start) * 1e3 / len(split)
      assert not result.failures, result.failures[:3]
      assert result.written == len(split)
      return len(split) / seconds, cpu_ms, _dir_bytes(out)
    finally:
      shutil.rmtree(out)

  # Warm-up: page cache of the source files, jit compilation.
  for mode in modes:
    run_once(mode)
  rates = {mode: [] for mode in modes}
  cpu = {mode: [] for mode in modes}
  sizes = {}
  order = list(modes)
  for r in range(args.rounds):
    for mode in (order if r % 2 == 0 else order[::-1]):
      rate, cpu_ms, size = run_once(mode)
      rates[mode].append(rate)
      cpu[mode].append(cpu_ms)
      sizes[mode] = size
      print(f"round {r} {mode:9s} {rate:7.1f} images/s  {cpu_ms:.3f} CPU ms/image")

  median = {m: statistics.median(v) for m, v in rates.items()}
  median_cpu = {m: statistics.median(v) for m, v in cpu.items()}
  print(f"\n{len(split)} images {image_shape}, {args.workers} workers, "
        f"JPEG QF {args.quality} {args.subsampling}, scheme {args.scheme}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
  for mode in modes:
    print(f"{mode:9s} median {median[mode]:7.1f} images/s  "
          f"{median_cpu[mode]:.3f} CPU ms/image  (runs: "
          f"{', '.join(f'{v:.1f}' for v in rates[mode])}); output "
          f"{sizes[mode] / len(split) / 1024:.1f} KiB/image")
  ratio = median["encrypted"] / median["plain"]
  cpu_ratio = median_cpu["encrypted"] / median_cpu["plain"]
  print(f"encrypted / plain throughput: {ratio:.3f} "
        f"({(1 - ratio) * 100:+.1f}% slower with encryption; target <= 10%)")
  print(f"encrypted / plain CPU time per image: {cpu_ratio:.3f} "
        f"({(cpu_ratio - 1) * 100:+.1f}% more CPU with encryption)")


if __name__ == "__main__":
  main()
