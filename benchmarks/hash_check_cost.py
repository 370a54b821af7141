r"""Cost of the per-file hash check when training reads an encrypted dataset.

The pipeline checks every file of an encrypted dataset against the SHA-256
its manifest recorded (issue 15). tf.data reads each file once in its
parallel map and carries the bytes; a file's first read in a run is
SHA-256-checked (one Python call per batch), which records a farmhash64
fingerprint taken in the graph; later epochs compare only that fingerprint
(in the graph: no Python call). This measures `pipeline.train_iterator`
images/s on CIFAR-10 encrypted on disk (EtC, JPEG QF 85 written by
`python -m etcjax.encrypt encrypt`):

  A  checked: the shipped code path;
  B  unchecked: the same pipeline with the hashes withheld, so files are
     read by tf.io.read_file inside the parallel map (the code path before
     hashes existed).

Each run times the first pass over the split (every file SHA-256-checked)
and then `--steps` steady-state batches (fingerprints only) separately.
Runs A B B A A B ... in one process (this machine is shared and noisy) and
prints rates and process CPU time per image, per-round ratios and the
median ratios checked / unchecked of both phases (target: steady-state
throughput at least 0.95, i.e. at most 5% slower).

    python benchmarks/hash_check_cost.py --tfds_data_dir=DIR \
        [--split=test --limit=10000 --rounds=6 --steps=300 --batch_size=128]

Encrypts the first `--limit` images of the split into a temporary folder
first (with a throwaway key), then deletes it.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

from etcjax import encrypt as encrypt_cli
from etcjax import encryption
from etcjax.data import encrypted_dataset
from etcjax.data import pipeline
from etcjax.data import sources
from etcjax.training import default_config


def make_config(root, fingerprint, batch_size):
  config = default_config.get_default_config()
  config.dataset = "encrypted"
  config.data_dir = root
  config.train_split = config.eval_split = "test"
  config.image_size = 32
  config.batch_size = batch_size
  config.seed = 0
  config.encryption.scheme = "etc"
  config.encryption.fingerprint = fingerprint
  config.encryption.jpeg_quality = 85
  config.augment.crop = "none"
  config.augment.flip = False
  return config


def time_pipeline(config, epoch_steps, steps, warmup=2):
  """Rates of the first pass and of the steady state after it.

  Returns:
    {"first": (images/s, CPU ms/image), "steady": (...)}: the first pass
    is steps [warmup, epoch_steps) (the warm-up steps hold the tracing);
    the steady state the `steps` steps after it.
  """
  it = pipeline.train_iterator(config)
  for _ in range(warmup):
    next(it)
  out = {}
  for phase, count in (("first", epoch_steps - warmup), ("steady", steps)):
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
      next(it)
    images = count * config.batch_size
    out[phase] = (images / (time.perf_counter() - start),
                  (time.process_time() - cpu) * 1e3 / images)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tfds_data_dir",
                      default=os.environ.get("TFDS_DATA_DIR"))
  parser.add_argument("--split", default="test")
  parser.add_argument("--limit", type=int, default=10000)
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=128)
  args = parser.parse_args()

  work = tempfile.mkdtemp(prefix="etcjax_hash_bench_")
  try:
    key_file = os.path.join(work, "owner.key")
    fingerprint = encryption.save_key(key_file, encryption.generate_key())
    root = os.path.join(work, "cifar10_etc")
    argv = ["encrypt", f"--key_file={key_file}", "--source=tfds:cifar10",
            f"--split={args.split}", f"--limit={args.limit}", f"--out={root}",
            "--quality=85", "--no_progress"]
    if args.tfds_data_dir:
      argv.append(f"--data_dir={args.tfds_data_dir}")
    assert encrypt_cli.main(argv) == 0
    # The encrypted split is called "test" whatever --split was.
    if args.split != "test":
      manifest = encrypted_dataset.read_manifest(root)
      manifest["splits"]["test"] = manifest["splits"].pop(args.split)
      os.rename(os.path.join(root, args.split), os.path.join(root, "test"))
      encrypted_dataset.write_manifest(root, manifest)
    config = make_config(root, fingerprint, args.batch_size)

    real = encrypted_dataset.split_hashes

    def run(mode):
      if mode == "unchecked":
        encrypted_dataset.split_hashes = lambda *a, **k: None
      try:
        source = sources.load_encrypted_split(
            root, "test", encrypted_dataset.read_manifest(root))
        assert (source.hashes is None) == (mode == "unchecked")
        return time_pipeline(config, epoch_steps, args.steps)
      finally:
        encrypted_dataset.split_hashes = real

    epoch_steps = args.limit // args.batch_size
    for mode in ("checked", "unchecked"):  # warm-up: page cache, tracing
      run(mode)
    modes = ("checked", "unchecked")
    results = {m: [] for m in modes}
    for r in range(args.rounds):
      for mode in modes if r % 2 == 0 else modes[::-1]:
        results[mode].append(run(mode))
      line = [f"round {r}:"]
      for phase in ("first", "steady"):
        (a, a_ms), (b, b_ms) = (results[m][-1][phase] for m in modes)
        line.append(f"{phase} checked {a:6.0f} img/s ({a_ms:.3f} CPU ms/img) "
                    f"unchecked {b:6.0f} ({b_ms:.3f}) ratio {a / b:.3f};")
      print(" ".join(line), flush=True)
    for phase, what in (("first", "first pass (SHA-256 of every file)"),
                        ("steady", "steady state (fingerprints)")):
      ratios = [a[phase][0] / b[phase][0] for a, b in zip(*results.values())]
      cpu_ratios = [a[phase][1] / b[phase][1]
                    for a, b in zip(*results.values())]
      ratio = statistics.median(ratios)
      print(f"{what}: median throughput checked / unchecked {ratio:.3f} "
            f"(per round {min(ratios):.3f}-{max(ratios):.3f}), median CPU per "
            f"image {statistics.median(cpu_ratios):.3f}x")
    steady = statistics.median(a["steady"][0] / b["steady"][0]
                               for a, b in zip(*results.values()))
    print(f"{args.rounds} rounds, first pass {epoch_steps} and steady "
          f"{args.steps} batches of {args.batch_size} ({os.cpu_count()} CPUs); "
          f"target steady-state throughput >= 0.95: "
          f"{'met' if steady >= 0.95 else 'NOT met'}")
  finally:
    shutil.rmtree(work)


if __name__ == "__main__":
  main()
