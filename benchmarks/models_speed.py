"""Model speed on CPU: etcjax (JAX/Flax) against PyTorch in the same run.

Measures images/s and peak resident memory of

- a ConvMixer-256/8 (k=9) training step (forward, backward, AdamW) on 32x32
  images, batch 64, at patch sizes 1, 2 and 4, and the `:cpu` configs'
  ConvMixer (dim 128, depth 6, P=4, k=5);
- ViT-Ti/16 training (batch 16) and ViT-Ti/16 and ViT-B/16 inference at
  224x224;

for etcjax's models and for few-line PyTorch equivalents (channels_last for
the ConvMixer, PyTorch's fastest CPU layout). Each model runs in its own
worker process, so that peak memory (`ru_maxrss`) is per model; the
orchestrator alternates the two frameworks' workers round by round (A B A B
...) because the speed of a shared CPU drifts, and reports the median
throughput ratio (ours / PyTorch) and the memory ratio.

Each round lasts at least `--round_seconds` (default 10 s) per framework:
the number of steps per round is sized from the warm-up steps' time, so a
short burst of another job on a shared machine moves one round a little
instead of flipping it. Every round's ratio is printed; the table gives the
median ratio and its spread (min-max over rounds).

    python benchmarks/models_speed.py                # everything
    python benchmarks/models_speed.py --only convmixer_p4 --rounds 5
    python benchmarks/models_speed.py --only convmixer_p2 --method shifted
    python benchmarks/models_speed.py --only convmixer_p4 --method toeplitz \
        --baseline_method shifted   # two depthwise methods, no PyTorch
    python benchmarks/models_speed.py --only vit_ti16_train \
        --baseline_attention_method xla   # attention 'auto' against 'xla'

The etcjax worker runs in the environment `python -m etcjax.main` gives
itself: glibc's transparent-huge-page tunable where it helps (see
etcjax/host_memory.py); PyTorch as users run it. `--huge_pages both` gives
PyTorch the same tunable, `--huge_pages none` neither.

PyTorch is a benchmark-only dependency: `pip install torch==2.13.0` (CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Only the standard library: the orchestrator imports no framework.
from etcjax import host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position

# name -> (kind, settings). ConvMixers train (dim, depth, kernel k, patch P).
CASES = {
    "convmixer_p1": dict(kind="convmixer", dim=256, depth=8, k=9, patch=1,
                         batch=64),
    "convmixer_p2": dict(kind="convmixer", dim=256, depth=8, k=9, patch=2,
                         batch=64),
    "convmixer_p4": dict(kind="convmixer", dim=256, depth=8, k=9, patch=4,
                         batch=64),
    "convmixer_cpu": dict(kind="convmixer", dim=128, depth=6, k=5, patch=4,
                          batch=64),
    "vit_ti16_train": dict(kind="vit", size="Ti", batch=16, train=True),
    "vit_ti16": dict(kind="vit", size="Ti", batch=32),
    "vit_b16": dict(kind="vit", size="B", batch=8),
}
VIT = {"Ti": (192, 12, 3, 768), "B": (768, 12, 12, 3072)}
IMAGE_SIZE = {"convmixer": 32, "vit": 224}


# --- workers -----------------------------------------------------------------


def _jax_train_step(module, tx, labels):
  """A jitted forward/backward/AdamW step of a flax model (BatchNorm aware)."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  def train_step(state, images):
    params, batch_stats, opt_state = state

    def loss_fn(params):
      variables = {"params": params}
      if batch_stats:
        variables["batch_stats"] = batch_stats
        logits, updates = module.apply(variables, images, train=True,
                                       mutable=["batch_stats"])
        new_stats = updates["batch_stats"]
      else:
        logits, new_stats = module.apply(variables, images, train=True), {}
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
      return loss, new_stats

    (loss, batch_stats), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats,
            opt_state), loss

  return jax.jit(train_step, donate_argnums=0)


def _jax_worker(case):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from etcjax import models  # pylint: disable=g-import-not-at-top

  size = IMAGE_SIZE[case["kind"]]
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (case["batch"], size, size, 3)),
                       jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, case["batch"]))
  if case["kind"] == "convmixer":
    module, variables = models.create(
        "ConvMixer-256/8", 10, size, dim=case["dim"], depth=case["depth"],
        kernel_size=case["k"], patch_size=case["patch"],
        depthwise_method=case.get("method", "auto"))
    train = True
  else:
    train = case.get("train", False)
    module, variables = models.create(f"ViT-{case['size']}_16",
                                      10 if train else 1000, size,
                                      init=train)
    module = module.clone(attention_method=case.get("method", "auto"))
    if not train:
      # As `predict` serves an export: shapes from `jax.eval_shape`, then
      # the stored weights (random ones here), not a compiled initialisation.
      variables = jax.tree.map(
          lambda s: jnp.asarray(
              0.02 * rng.standard_normal(s.shape, dtype=np.float32), s.dtype),
          variables)
  if train:
    tx = optax.adamw(1e-3)
    state = (variables["params"], variables.get("batch_stats", {}),
             tx.init(variables["params"]))
    step = _jax_train_step(module, tx, labels)

    def run():
      nonlocal state
      state, loss = step(state, images)
      return loss
  else:
    forward = jax.jit(lambda v, x: module.apply(v, x, train=False))

    def run():
      return forward(variables, images)
  return run, jax.block_until_ready


def _torch_worker(case):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  size = IMAGE_SIZE[case["kind"]]
  images = torch.rand(case["batch"], 3, size, size) * 2 - 1
  labels = torch.randint(0, 10, (case["batch"],))
  if case["kind"] == "convmixer":

    class Residual(nn.Module):

      def __init__(self, fn):
        super().__init__()
        self.fn = fn

      def forward(self, x):
        return self.fn(x) + x

    dim, depth, k, p = case["dim"], case["depth"], case["k"], case["patch"]
    model = nn.Sequential(
        nn.Conv2d(3, dim, p, stride=p), nn.GELU(), nn.BatchNorm2d(dim),
        *[nn.Sequential(
            Residual(nn.Sequential(
                nn.Conv2d(dim, dim, k, groups=dim, padding="same"),
                nn.GELU(), nn.BatchNorm2d(dim))),
            nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))
          for _ in range(depth)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, 10))
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
    train = True
  else:
    hidden, depth, heads, mlp = VIT[case["size"]]
    classes = 10 if case.get("train") else 1000

    class ViT(nn.Module):

      def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, hidden, 16, stride=16)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos = nn.Parameter(torch.zeros(1, (size // 16) ** 2 + 1, hidden))
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(
            hidden, heads, mlp, dropout=0.0, activation="gelu",
            layer_norm_eps=1e-6, batch_first=True, norm_first=True), depth,
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, classes)

      def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])

    train = case.get("train", False)
    model = ViT().train(train)
  if train:
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    def run():
      optimizer.zero_grad(set_to_none=True)
      loss = nn.functional.cross_entropy(model(images), labels)
      loss.backward()
      optimizer.step()
      return loss
  else:

    def run():
      with torch.inference_mode():
        return model(images)
  return run, lambda x: x


def worker(framework: str, case_name: str) -> None:
  """Serves 'run N' (prints seconds) and 'quit' (prints peak RSS) on stdio.

  Prints 'READY <seconds of one warm step>' once compiled and warmed up.
  """
  case = json.loads(case_name) if case_name.startswith("{") else CASES[case_name]
  run, block = (_jax_worker if framework == "jax" else _torch_worker)(case)
  block(run())  # compile / warm up
  start = time.perf_counter()
  block(run())
  print("READY", time.perf_counter() - start, flush=True)
  for line in sys.stdin:
    command = line.split()
    if command[0] == "run":
      start = time.perf_counter()
      for _ in range(int(command[1])):
        out = run()
      block(out)
      print(time.perf_counter() - start, flush=True)
    else:
      rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
      print(rss_mb, flush=True)
      return


# --- orchestrator -------------------------------------------------------------


class Worker:
  """A worker process driven over pipes."""

  def __init__(self, framework: str, case: str, huge_pages: bool):
    env = host_memory.environment(os.environ) if huge_pages else None
    self.process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", framework,
         "--case", case], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=env or dict(os.environ))
    line = self.process.stdout.readline().split()
    if not line or line[0] != "READY":
      raise RuntimeError(f"{framework} worker for {case} failed to start")
    self.step_seconds = float(line[1])

  def ask(self, command: str) -> float:
    self.process.stdin.write(command + "\n")
    self.process.stdin.flush()
    return float(self.process.stdout.readline())

  def finish(self) -> float:
    rss = self.ask("quit")
    self.process.wait()
    return rss


def compare(case_name: str, case: dict, rounds: int,
            round_seconds: float, baseline_method=None,
            huge_pages: str = "etcjax") -> dict:
  """Alternates the two frameworks; returns throughputs, memory and ratios.

  With `baseline_method`, the baseline ("torch" columns) is our own model
  with that method (depthwise for ConvMixer, attention for ViT) instead of
  PyTorch. `huge_pages`: which workers get the huge-page tunable, 'etcjax'
  (ours, and our baseline), 'both' or 'none'.
  """
  ours = Worker("jax", case_name, huge_pages != "none")
  if baseline_method:
    theirs = Worker("jax", json.dumps(dict(case, method=baseline_method)),
                    huge_pages != "none")
  else:
    theirs = Worker("torch", case_name, huge_pages == "both")
  # Each framework gets its own step count so that both rounds last at
  # least round_seconds; speeds are compared in images/s.
  counts = {name: max(1, math.ceil(round_seconds / w.step_seconds))
            for name, w in (("jax", ours), ("torch", theirs))}
  speeds = {"jax": [], "torch": []}
  for r in range(rounds):
    for name, w in (("jax", ours), ("torch", theirs)):
      seconds = w.ask(f"run {counts[name]}")
      speeds[name].append(case["batch"] * counts[name] / seconds)
    print(f"  round {r + 1}: ours {speeds['jax'][-1]:7.1f} img/s, torch "
          f"{speeds['torch'][-1]:7.1f} img/s, ratio "
          f"{speeds['jax'][-1] / speeds['torch'][-1]:.2f}", flush=True)
  memory = {"jax": ours.finish(), "torch": theirs.finish()}
  # Ratios of adjacent rounds cancel most of the drift of a shared CPU.
  ratios = [a / b for a, b in zip(speeds["jax"], speeds["torch"])]
  return {
      "case": case_name,
      "jax_img_s": statistics.median(speeds["jax"]),
      "torch_img_s": statistics.median(speeds["torch"]),
      "round_ratios": ratios,
      "speed_ratio": statistics.median(ratios),
      "ratio_min": min(ratios),
      "ratio_max": max(ratios),
      "jax_peak_mb": memory["jax"],
      "torch_peak_mb": memory["torch"],
      "memory_ratio": memory["jax"] / memory["torch"],
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--worker", choices=["jax", "torch"])
  parser.add_argument("--case")
  parser.add_argument("--only", nargs="*", choices=sorted(CASES))
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--round_seconds", type=float, default=10.0,
                      help="minimum length of one framework's round")
  parser.add_argument("--method", default="auto",
                      help="depthwise_method of our ConvMixer")
  parser.add_argument("--baseline_method",
                      help="compare our ConvMixer with --method against "
                      "ours with this depthwise method instead of PyTorch")
  parser.add_argument("--attention_method", default="auto",
                      help="attention_method of our ViT")
  parser.add_argument("--baseline_attention_method",
                      help="compare our ViT with --attention_method against "
                      "ours with this attention method instead of PyTorch")
  parser.add_argument("--huge_pages", choices=["etcjax", "both", "none"],
                      default="etcjax",
                      help="workers started with glibc's transparent-huge-"
                      "page tunable where it helps (etcjax/host_memory.py): "
                      "ours, as `python -m etcjax.main` runs (default), "
                      "PyTorch's too, or none")
  parser.add_argument("--json", help="also write the results to this file")
  args = parser.parse_args(argv)
  if args.worker:
    worker(args.worker, args.case)
    return
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    sys.exit("PyTorch is needed for the comparison: pip install torch==2.13.0")
  tunable = host_memory.environment(os.environ) is not None
  print(f"huge-page tunable: {args.huge_pages if tunable else 'not used'} "
        f"(glibc {host_memory.glibc_version()}, THP mode "
        f"{host_memory.thp_mode()}, GLIBC_TUNABLES "
        f"{os.environ.get('GLIBC_TUNABLES', '')!r})", flush=True)
  results = []
  for name in args.only or CASES:
    case = dict(CASES[name])
    convmixer = case["kind"] == "convmixer"
    case["method"] = args.method if convmixer else args.attention_method
    print(f"{name} (method {case['method']}):", flush=True)
    baseline = (args.baseline_method if convmixer
                else args.baseline_attention_method)
    r = compare(json.dumps(case), case, args.rounds, args.round_seconds,
                baseline, args.huge_pages)
    r["name"] = name
    results.append(r)
  print(f"{'case':15s} {'method':>8s} {'ours img/s':>10s} {'torch img/s':>11s}"
        f" {'ratio':>6s} {'min-max':>10s} {'ours MB':>8s} {'torch MB':>8s} "
        f"{'mem ratio':>9s}")
  for r in results:
    method = json.loads(r["case"]).get("method", "-")
    print(f"{r['name']:15s} {method:>8s} {r['jax_img_s']:10.1f} "
          f"{r['torch_img_s']:11.1f} {r['speed_ratio']:6.2f} "
          f"{r['ratio_min']:4.2f}-{r['ratio_max']:4.2f} "
          f"{r['jax_peak_mb']:8.0f} {r['torch_peak_mb']:8.0f} "
          f"{r['memory_ratio']:9.2f}", flush=True)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
