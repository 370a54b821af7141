r"""One-command speed report of the paper's train steps on this machine's device.

For ViT-B/16 at 224x224 (`configs/vit_etc.py`), ConvMixer-256/8 with patch 1
on CIFAR-10 (`configs/convmixer_cifar10_etc.py`) and ConvMixer-384/8 on
Imagenette (`configs/convmixer_imagenette_etc.py`), it builds the configs'
real train step (`etcjax.training.steps.train_step`: on-the-fly EtC,
mixup/CutMix, forward, backward, optimizer) with the model registry and the
configs' compute dtype ('auto': bfloat16 on TPU/GPU, float32 on CPU), and
measures

- step time and images/s of the jitted step (batch sharded over all local
  devices, state donated, as in training);
- model FLOPs per step from XLA's cost analysis of the compiled step (it
  counts the formulation that runs: e.g. on CPU the Toeplitz matmuls of the
  depthwise convolutions, zeros included), and MFU = FLOPs / step time /
  the device's peak bfloat16 FLOP/s from `PEAK_FLOPS` (reported only for
  bfloat16 compute on a device kind in that table; otherwise it says why);
- the share of the step spent encrypting: a jitted `encryption.apply` of the
  same batch timed alone (the step runs the same code), and both on-device
  EtC formulations (flat gather, block operations) timed alone;
- the input pipeline's images/s (`etcjax.data.pipeline.train_iterator` on
  the config's real data, on this host) against the step's;
- peak device memory (`device.memory_stats()['peak_bytes_in_use']`, where
  the backend reports it; the CPU does not) and XLA's memory analysis of
  the compiled step (arguments + outputs + temporaries);
- parity: the losses and gradient norms of the first `--parity_steps` steps
  on the device against the same steps (same initial parameters, batches
  and randomness) in float32 on the CPU, within a relative tolerance of
  1e-4 for float32 compute and 5e-2 for bfloat16. The gradient norms are
  what tests the model's body: ViT's head starts at zero (as vit_jax's), so
  its first losses are ln(classes) whatever the body computes.

It prints one table and writes the numbers to `--out` (JSON). With `--tiny`
(the default on a CPU) the models are shrunk (width 16-32, one or two
layers, 32x32 images, batch 8), so the whole report takes seconds; it then
checks the machinery, not the speed of the paper's models.

    python benchmarks/accelerator.py                    # on a TPU/GPU host
    python benchmarks/accelerator.py --tiny --out=/tmp/accelerator.json
    python benchmarks/accelerator.py --data_dir=/path/to/data  # real data
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from etcjax import encryption  # pylint: disable=g-import-not-at-top,wrong-import-position
from etcjax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from etcjax.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from etcjax.data import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from etcjax.encryption import block_apply  # pylint: disable=g-import-not-at-top,wrong-import-position
from etcjax.encryption import plans  # pylint: disable=g-import-not-at-top,wrong-import-position
from etcjax.training import default_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from etcjax.training import optimizers  # pylint: disable=g-import-not-at-top,wrong-import-position
from etcjax.training import steps  # pylint: disable=g-import-not-at-top,wrong-import-position

# Peak dense bfloat16 matmul FLOP/s of one JAX device (a TPU v2/v3 device
# is one core, half a chip; v4 and later devices are chips), from the
# vendors' data sheets. Matched as substrings of the lower-cased
# `device.device_kind`, first match wins.
PEAK_FLOPS = (
    ("tpu v6 lite", 918e12), ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12), ("tpu v5e", 197e12),
    ("tpu v5p", 459e12), ("tpu v5", 459e12),
    ("tpu v4", 275e12), ("tpu v3", 61.5e12), ("tpu v2", 22.5e12),
    ("h100 pcie", 756e12), ("h100", 989e12), ("a100", 312e12),
    ("l4", 121e12),
)
PARITY_RTOL = {"float32": 1e-4, "bfloat16": 5e-2}

# name -> (config file, model overrides and image size for --tiny)
CASES = {
    "vit_b16": ("vit_etc.py", dict(hidden_size=32, num_layers=1, num_heads=2,
                                   mlp_dim=64, patch_size=4)),
    "convmixer_256_8_cifar10": ("convmixer_cifar10_etc.py",
                                dict(dim=16, depth=1, kernel_size=3)),
    "convmixer_384_8_imagenette": ("convmixer_imagenette_etc.py",
                                   dict(dim=16, depth=1, kernel_size=3)),
}
DEFAULT_BATCH = {"vit_b16": 128, "convmixer_256_8_cifar10": 128,
                 "convmixer_384_8_imagenette": 64}
TINY_BATCH = 8
TINY_IMAGE = 32


def peak_flops(device_kind: str):
  """Peak bfloat16 FLOP/s of a device kind, or None if not in the table."""
  kind = device_kind.lower()
  for name, flops in PEAK_FLOPS:
    if name in kind:
      return flops
  return None


def case_config(name: str, tiny: bool, data_dir, batch_size=None):
  """The case's training config (its real config file, shrunk if tiny)."""
  filename, tiny_overrides = CASES[name]
  config = default_config.load_sibling(
      filename, os.path.join(ROOT, "configs", "anchor")).get_config()
  if data_dir:
    if config.dataset == "folder":
      config.data_dir = os.path.join(data_dir, "imagenette_224")
    else:
      config.data_dir = os.path.join(data_dir, "tensorflow_datasets")
  config.batch_size = batch_size or (TINY_BATCH if tiny else
                                     DEFAULT_BATCH[name])
  if tiny:
    config.image_size = TINY_IMAGE
    config.model_kwargs.update(tiny_overrides)
    # Blocks must tile the tiny images; the real block size otherwise.
    config.encryption.block_size = min(config.encryption.block_size, 8)
  return config


def _time(fn, min_seconds: float, min_calls: int, max_calls: int):
  """Median-free mean seconds per call over >= min_seconds (after one call)."""
  jax.block_until_ready(fn())
  calls, start = 0, time.perf_counter()
  while calls < min_calls or (time.perf_counter() - start < min_seconds and
                              calls < max_calls):
    out = fn()
    calls += 1
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def _step_setup(config, module, num_classes, compute_dtype, mesh, plan):
  """Initial state and the jitted real train step for a config."""
  tx = optimizers.make_optimizer(config, 1000)
  variables = models.init_variables(module, config.image_size,
                                    jax.random.key(config.seed))
  state = steps.TrainState.create(variables, tx)
  aug = config.augment
  options = steps.StepOptions(
      num_classes=num_classes, encrypt=plan is not None,
      label_smoothing=aug.label_smoothing, mixup_alpha=aug.mixup_alpha,
      cutmix_alpha=aug.cutmix_alpha, mix_prob=aug.mix_prob,
      switch_prob=aug.switch_prob, compute_dtype=compute_dtype)
  step = jax.jit(functools.partial(
      steps.train_step, rng=jax.random.key(config.seed), model=module, tx=tx,
      schedule=optimizers.make_schedule(config, 1000), options=options),
                 donate_argnums=0)
  return sharding.replicate(state, mesh), step


def _batches(config, num_classes, count):
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.image_size, config.image_size, 3)
  return [{"image": rng.integers(0, 256, shape, dtype=np.uint8),
           "label": rng.integers(0, num_classes, config.batch_size,
                                 dtype=np.int32)} for _ in range(count)]


def _trajectory(state, step, batches, plan, mesh):
  """Losses and gradient norms of consecutive steps from `state`."""
  losses, grad_norms = [], []
  for batch in batches:
    state, metrics = step(state, sharding.global_batch(batch, mesh), plan=plan)
    losses.append(float(metrics["loss"]))
    grad_norms.append(float(metrics["grad_norm"]))
  return losses, grad_norms


def _max_rel_diff(values, references):
  return max(abs(a - b) / max(abs(b), 1e-12)
             for a, b in zip(values, references))


def _pipeline_images_per_s(config, batches: int):
  """The real input pipeline's images/s on this host, or the reason none."""
  try:
    it = pipeline.train_iterator(config)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    return batches * config.batch_size / (time.perf_counter() - start), None
  except (FileNotFoundError, ValueError) as e:  # no data here
    return None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"


def run_case(name: str, args) -> dict:
  """Measures one case; returns its report row."""
  config = case_config(name, args.tiny, args.data_dir, args.batch_size)
  compute_dtype = steps.resolve_compute_dtype(
      args.compute_dtype or config.compute_dtype)
  info_classes = 10
  mesh = sharding.make_mesh()
  device = jax.devices()[0]
  size = (config.image_size, config.image_size, 3)
  module = models.build(config.model, info_classes,
                        **config.model_kwargs.to_dict())
  # A throwaway key: speed does not depend on it, and none is stored.
  plan = encryption.make_plan(os.urandom(32), config.encryption.scheme, size,
                              config.encryption.block_size)
  device_plan = sharding.replicate(plan, mesh)
  state, step = _step_setup(config, module, info_classes, compute_dtype,
                            mesh, device_plan)
  timed = _batches(config, info_classes, 1)[0]
  batch = sharding.global_batch(timed, mesh)

  start = time.perf_counter()
  compiled = step.lower(state, batch, plan=device_plan).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = float(cost.get("flops", 0.0)) or None
  memory = compiled.memory_analysis()
  xla_bytes = None
  if memory is not None:
    xla_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                 + memory.temp_size_in_bytes)

  holder = [state]

  def one_step():
    holder[0], metrics = compiled(holder[0], batch, plan=device_plan)
    return metrics["loss"]

  step_s = _time(one_step, args.min_seconds, 3, 1000)
  images_per_s = config.batch_size / step_s

  images = batch["image"]
  apply = jax.jit(plans.apply)
  gather_fn = jax.jit(functools.partial(
      plans._encrypt_flat, representation=plan.representation,  # pylint: disable=protected-access
      out_shape=plan.encrypted_shape))
  encrypt_s = _time(lambda: apply(device_plan, images), args.min_seconds / 4,
                    3, 10000)
  gather_s = _time(lambda: gather_fn(device_plan.gather, device_plan.xor,
                                     images), args.min_seconds / 4, 3, 10000)
  blocks_s = None
  if block_apply.supports(plan):
    blocks_s = _time(lambda: plans._encrypt_blocks(  # pylint: disable=protected-access
        device_plan.gather, device_plan.xor, images,
        image_shape=plan.image_shape, block_size=plan.block_size),
                     args.min_seconds / 4, 3, 10000)
  used = ("blocks" if block_apply.prefer_blocks(
      plan, jax.default_backend()) else "gather")

  peak_bytes = None
  try:
    stats = device.memory_stats()
    peak_bytes = stats.get("peak_bytes_in_use") if stats else None
  except (AttributeError, NotImplementedError, RuntimeError):
    pass

  pipe_ips, pipe_note = _pipeline_images_per_s(config, args.pipeline_batches)

  # Parity: the first steps from the same state on the device (its compute
  # dtype) and on the CPU in float32.
  pconfig = config.copy_and_resolve_references()
  pconfig.batch_size = min(config.batch_size, args.parity_batch)
  pconfig.batch_size -= pconfig.batch_size % jax.device_count() or 0
  pconfig.batch_size = max(pconfig.batch_size, jax.device_count())
  parity_batches = _batches(pconfig, info_classes, args.parity_steps)
  pstate, pstep = _step_setup(pconfig, module, info_classes, compute_dtype,
                              mesh, device_plan)
  if pconfig.batch_size == config.batch_size:
    pstep = compiled  # the timed step itself, no second compilation
  device_losses, device_norms = _trajectory(pstate, pstep, parity_batches,
                                            device_plan, mesh)
  cpu = jax.devices("cpu")[:1]
  cpu_mesh = sharding.make_mesh(cpu)
  with jax.default_device(cpu[0]):
    cplan = sharding.replicate(plan, cpu_mesh)
    cstate, cstep = _step_setup(pconfig, module, info_classes, "float32",
                                cpu_mesh, cplan)
    cpu_losses, cpu_norms = _trajectory(cstate, cstep, parity_batches, cplan,
                                        cpu_mesh)
  rel = max(_max_rel_diff(device_losses, cpu_losses),
            _max_rel_diff(device_norms, cpu_norms))
  rtol = PARITY_RTOL[compute_dtype]

  peak = peak_flops(device.device_kind)
  if flops is None:
    mfu, mfu_note = None, "XLA reported no FLOP count"
  elif compute_dtype != "bfloat16":
    mfu, mfu_note = None, f"{compute_dtype} compute (peaks are bfloat16)"
  elif peak is None:
    mfu, mfu_note = None, f"unknown peak for device kind {device.device_kind!r}"
  else:
    mfu, mfu_note = flops / step_s / (peak * jax.device_count()), None
  return {
      "case": name, "config": CASES[name][0], "model": config.model,
      "model_kwargs": config.model_kwargs.to_dict(), "tiny": args.tiny,
      "image_size": config.image_size, "batch_size": config.batch_size,
      "block_size": config.encryption.block_size,
      "compute_dtype": compute_dtype, "compile_s": compile_s,
      "step_ms": step_s * 1e3, "images_per_s": images_per_s,
      "flops_per_step": flops, "flops_source": "XLA cost analysis",
      "peak_flops_per_device": peak, "mfu": mfu, "mfu_note": mfu_note,
      "encrypt_ms": encrypt_s * 1e3, "encrypt_share": encrypt_s / step_s,
      "etc_used": used, "etc_gather_ms": gather_s * 1e3,
      "etc_blocks_ms": None if blocks_s is None else blocks_s * 1e3,
      "pipeline_images_per_s": pipe_ips, "pipeline_note": pipe_note,
      "pipeline_over_step": None if pipe_ips is None else pipe_ips / images_per_s,
      "peak_device_bytes": peak_bytes,
      "peak_device_note": None if peak_bytes is not None else
                          "backend reports no memory_stats",
      "xla_memory_bytes": xla_bytes,
      "parity_device_losses": device_losses, "parity_cpu_losses": cpu_losses,
      "parity_device_grad_norms": device_norms,
      "parity_cpu_grad_norms": cpu_norms,
      "parity_batch_size": pconfig.batch_size,
      "parity_max_rel_diff": rel, "parity_rtol": rtol,
      "parity_ok": bool(rel <= rtol),
  }


def _fmt(value, spec, missing="n/a"):
  return missing if value is None else format(value, spec)


def print_table(rows, device) -> None:
  print(f"device: {jax.device_count()} x {device.device_kind} "
        f"({jax.default_backend()}), jax {jax.__version__}")
  header = (f"{'case':27s} {'dtype':8s} {'batch':>5s} {'step ms':>8s} "
            f"{'img/s':>8s} {'GFLOP/step':>10s} {'MFU':>6s} {'encrypt':>7s} "
            f"{'ETC':>6s} {'pipe/step':>9s} {'peak MB':>8s} {'XLA MB':>7s} "
            f"{'parity':>12s}")
  print(header)
  for r in rows:
    gflops = None if r["flops_per_step"] is None else r["flops_per_step"] / 1e9
    peak_mb = (None if r["peak_device_bytes"] is None
               else r["peak_device_bytes"] / 2**20)
    xla_mb = (None if r["xla_memory_bytes"] is None
              else r["xla_memory_bytes"] / 2**20)
    parity = (f"{'ok' if r['parity_ok'] else 'FAIL'} "
              f"{r['parity_max_rel_diff']:.0e}")
    print(f"{r['case']:27s} {r['compute_dtype']:8s} {r['batch_size']:5d} "
          f"{r['step_ms']:8.1f} {r['images_per_s']:8.1f} "
          f"{_fmt(gflops, '10.2f'):>10s} {_fmt(r['mfu'], '6.1%'):>6s} "
          f"{r['encrypt_share']:7.1%} {r['etc_used']:>6s} "
          f"{_fmt(r['pipeline_over_step'], '9.2f'):>9s} "
          f"{_fmt(peak_mb, '8.0f'):>8s} {_fmt(xla_mb, '7.0f'):>7s} "
          f"{parity:>12s}")
  notes = sorted({f"MFU n/a: {r['mfu_note']}" for r in rows if r["mfu_note"]}
                 | {f"peak MB n/a: {r['peak_device_note']}" for r in rows
                    if r["peak_device_note"]}
                 | {f"pipe/step n/a for {r['case']}: {r['pipeline_note']}"
                    for r in rows if r["pipeline_note"]})
  for note in notes:
    print(f"  {note}")
  print("  encrypt = jitted encryption.apply of the batch alone / step time "
        "(gather ms vs blocks ms in the JSON); GFLOP from XLA cost analysis; "
        "parity = max relative difference of the first losses and gradient "
        "norms to a float32 "
        f"CPU run (tolerance {PARITY_RTOL['float32']:g} float32, "
        f"{PARITY_RTOL['bfloat16']:g} bfloat16)")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", nargs="*", choices=sorted(CASES),
                      help="default: all")
  parser.add_argument("--tiny", action="store_true", default=None,
                      help="shrunk models (default on CPU)")
  parser.add_argument("--full", dest="tiny", action="store_false",
                      help="the paper's sizes even on CPU")
  parser.add_argument("--compute_dtype", default=None,
                      help="override the configs' ('auto')")
  parser.add_argument("--data_dir", default=os.environ.get("ETCJAX_DATA_DIR"),
                      help="folder with tensorflow_datasets/ and "
                      "imagenette_224/ (default $ETCJAX_DATA_DIR; else the "
                      "configs' defaults)")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="global batch of the timed step (default "
                      f"{TINY_BATCH} tiny, else per case: {DEFAULT_BATCH})")
  parser.add_argument("--min_seconds", type=float, default=None,
                      help="timing per step measurement (default 10, tiny 1)")
  parser.add_argument("--pipeline_batches", type=int, default=None)
  parser.add_argument("--parity_steps", type=int, default=3)
  parser.add_argument("--parity_batch", type=int, default=8)
  parser.add_argument("--out", default="accelerator_report.json")
  args = parser.parse_args(argv)
  if args.batch_size is not None:
    try:
      sharding.check_batch_size(args.batch_size, "--batch_size")
    except ValueError as e:
      parser.error(str(e))
  if args.tiny is None:
    args.tiny = jax.default_backend() == "cpu"
  if args.min_seconds is None:
    args.min_seconds = 1.0 if args.tiny else 10.0
  if args.pipeline_batches is None:
    args.pipeline_batches = 3 if args.tiny else 30
  rows = [run_case(name, args) for name in args.cases or CASES]
  device = jax.devices()[0]
  print_table(rows, device)
  report = {"backend": jax.default_backend(), "device_kind": device.device_kind,
            "device_count": jax.device_count(), "jax": jax.__version__,
            "cases": rows}
  tmp = args.out + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  os.replace(tmp, args.out)
  print(f"wrote {args.out}")
  return 0 if all(r["parity_ok"] for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
