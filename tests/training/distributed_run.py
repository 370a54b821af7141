"""Trains the tiny model a few steps with etcjax's sharding; run as a script.

    python distributed_run.py --devices=8 --out=result.json
    python distributed_run.py --devices=1 --num_processes=2 --process_id=0 \
        --port=12345 --out=result0.json   # and process_id=1

Every process feeds its slice of each global batch (as the input pipeline
does); the script writes the per-step losses and final parameters (as
lists) to --out.
"""

import argparse
import json
import os
import sys


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--devices", type=int, default=1, help="local CPU devices")
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--out", required=True)
  args = p.parse_args()
  # Must precede the first use of jax.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import functools  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  if args.num_processes > 1:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=args.num_processes, process_id=args.process_id,
        initialization_timeout=60)
  from etcjax import encryption
  from etcjax.data import sharding
  from etcjax.training import default_config, optimizers, steps
  from training import tiny_model

  config = default_config.get_default_config()
  config.optim.update(name="adamw", schedule="one_cycle", learning_rate=0.02,
                      weight_decay=0.01, grad_clip_norm=1.0)
  tx = optimizers.make_optimizer(config, args.steps)
  model = tiny_model.TinyNet()
  mesh = sharding.make_mesh()
  replicated = sharding.replicated(mesh)
  init = jax.jit(
      lambda: steps.TrainState.create(tiny_model.init_variables(model), tx),
      out_shardings=replicated)
  state = init()
  # A fixed key (not a secret here) so every process makes the same plan.
  plan = encryption.make_plan(bytes(range(32)), "etc", (16, 16, 3), 4)
  options = steps.StepOptions(num_classes=4, encrypt=True, mixup_alpha=0.8,
                              cutmix_alpha=1.0, label_smoothing=0.1)
  train = jax.jit(
      functools.partial(steps.train_step, rng=jax.random.key(1), model=model,
                        tx=tx, schedule=optimizers.make_schedule(config, args.steps),
                        options=options),
      out_shardings=(replicated, replicated), donate_argnums=0)
  plan = sharding.replicate(plan, mesh)
  local = sharding.check_batch_size(args.batch)
  losses = []
  for step in range(args.steps):
    batch = tiny_model.synthetic_batch(step, args.batch)
    lo = jax.process_index() * local
    mine = {k: v[lo:lo + local] for k, v in batch.items()}
    state, metrics = train(state, sharding.global_batch(mine, mesh), plan=plan)
    losses.append(float(metrics["loss"]))
  params = jax.tree.map(lambda x: np.asarray(x).tolist(),
                        jax.device_get(state.variables()))
  with open(args.out, "w") as f:
    json.dump({"losses": losses, "variables": params,
               "devices": jax.device_count(),
               "processes": jax.process_count(),
               "batch_sharding": str(sharding.batch_sharded(mesh).spec)}, f)


if __name__ == "__main__":
  main()
