"""The pure train/eval steps on a tiny model and a synthetic task."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax import encryption
from etcjax.training import default_config
from etcjax.training import optimizers
from etcjax.training import steps
from training import tiny_model


@functools.lru_cache(maxsize=None)  # Compile each variant once.
def _setup(encrypt=False, compute_dtype="float32", mixup=0.0, batch_norm=True,
           lr=0.01):
  config = default_config.get_default_config()
  config.optim.update(name="adamw", schedule="constant", learning_rate=lr)
  tx = optimizers.make_optimizer(config, 100)
  model = tiny_model.TinyNet(batch_norm=batch_norm)
  state = steps.TrainState.create(tiny_model.init_variables(model), tx)
  options = steps.StepOptions(num_classes=4, encrypt=encrypt,
                              mixup_alpha=mixup, cutmix_alpha=mixup,
                              compute_dtype=compute_dtype)
  train = jax.jit(functools.partial(
      steps.train_step, model=model, tx=tx,
      schedule=optimizers.make_schedule(config, 100), options=options))
  evaluate = jax.jit(functools.partial(steps.eval_step, model=model,
                                       options=options))
  return state, train, evaluate


def test_training_reduces_loss_and_learns():
  state, train, evaluate = _setup()
  rng = jax.random.key(0)
  losses = []
  for i in range(40):
    state, metrics = train(state, tiny_model.synthetic_batch(i, 32), rng, None)
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
  batch = tiny_model.synthetic_batch(1000, 64)
  batch["mask"] = np.ones(64, bool)
  out = evaluate(state, batch, None)
  assert float(out["correct"]) / float(out["count"]) > 0.9
  assert int(state.step) == 40


def test_step_metrics_and_batch_stats():
  state, train, _ = _setup(mixup=0.5)
  new_state, metrics = train(state, tiny_model.synthetic_batch(0, 8),
                             jax.random.key(0), None)
  assert set(metrics) == {"loss", "accuracy", "grad_norm", "learning_rate"}
  assert all(v.dtype == jnp.float32 and v.shape == () for v in metrics.values())
  assert 0 <= float(metrics["accuracy"]) <= 1
  np.testing.assert_allclose(float(metrics["learning_rate"]), 0.01)
  old = jax.tree.leaves(state.batch_stats)
  new = jax.tree.leaves(new_state.batch_stats)
  assert all(n.dtype == jnp.float32 for n in new)
  assert any(not np.allclose(o, n) for o, n in zip(old, new))


def test_step_randomness_depends_on_step_only():
  state, train, _ = _setup(mixup=1.0)
  batch = tiny_model.synthetic_batch(0, 8)
  a, ma = train(state, batch, jax.random.key(3), None)
  b, mb = train(state, batch, jax.random.key(3), None)
  c, mc = train(state, batch, jax.random.key(4), None)
  assert float(ma["loss"]) == float(mb["loss"])
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  assert float(ma["loss"]) != float(mc["loss"])  # mixing draws changed


def test_on_device_encryption_equals_pre_encrypted_images():
  key = encryption.generate_key()
  plan = encryption.make_plan(key, "etc", (16, 16, 3), 4)
  batch = tiny_model.synthetic_batch(0, 8)
  pre = dict(batch, image=np.asarray(encryption.apply(plan, batch["image"])))
  assert not np.array_equal(pre["image"], batch["image"])
  state, train_enc, eval_enc = _setup(encrypt=True)
  _, train_plain, eval_plain = _setup(encrypt=False)
  rng = jax.random.key(0)
  a, ma = train_enc(state, batch, rng, plan)
  b, mb = train_plain(state, pre, rng, None)
  assert float(ma["loss"]) == float(mb["loss"])
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  # Without encryption the same plain batch gives another result.
  _, mc = train_plain(state, batch, rng, None)
  assert float(mc["loss"]) != float(ma["loss"])
  mask = np.ones(8, bool)
  ea = eval_enc(a, dict(batch, mask=mask), plan)
  eb = eval_plain(a, dict(pre, mask=mask), None)
  assert float(ea["loss"]) == float(eb["loss"])


def test_eval_ignores_padding():
  state, _, evaluate = _setup()
  batch = tiny_model.synthetic_batch(0, 8)
  mask = np.array([True] * 5 + [False] * 3)
  out = evaluate(state, dict(batch, mask=mask), None)
  first5 = {k: v[:5] for k, v in batch.items()}
  ref = evaluate(state, dict(first5, mask=np.ones(5, bool)), None)
  assert float(out["count"]) == 5
  np.testing.assert_allclose(float(out["loss"]), float(ref["loss"]), rtol=1e-5)
  assert float(out["correct"]) == float(ref["correct"])


def test_bfloat16_compute_keeps_float32_state():
  state, train, _ = _setup(compute_dtype="bfloat16")
  new_state, metrics = train(state, tiny_model.synthetic_batch(0, 8),
                             jax.random.key(0), None)
  assert metrics["loss"].dtype == jnp.float32
  for leaf in jax.tree.leaves((new_state.params, new_state.batch_stats)):
    assert leaf.dtype == jnp.float32
  _, f32_metrics = _setup()[1](state, tiny_model.synthetic_batch(0, 8),
                               jax.random.key(0), None)
  # Same computation at lower precision: close, not equal.
  np.testing.assert_allclose(float(metrics["loss"]), float(f32_metrics["loss"]),
                             rtol=0.05)
  assert float(metrics["loss"]) != float(f32_metrics["loss"])


def test_compute_dtype_auto_resolves_per_backend():
  # 'auto' is what the default config uses; forced backends stand in for
  # the accelerators this machine does not have.
  assert steps.resolve_compute_dtype("auto", "cpu") == "float32"
  assert steps.resolve_compute_dtype("auto", "tpu") == "bfloat16"
  assert steps.resolve_compute_dtype("auto", "gpu") == "bfloat16"
  assert steps.resolve_compute_dtype("auto") == "float32"  # this CPU
  assert steps.resolve_compute_dtype("bfloat16", "cpu") == "bfloat16"
  assert default_config.get_default_config().compute_dtype == "auto"
  with pytest.raises(ValueError, match="compute_dtype must be 'auto' or one"):
    steps.resolve_compute_dtype("float16")


def _matmul_dtypes(compute_dtype, monkeypatch=None, backend=None):
  """dtypes of the dot_general operands in a ConvMixer train step's jaxpr."""
  from etcjax import models  # pylint: disable=g-import-not-at-top
  if backend is not None:
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
  module, variables = models.create("ConvMixer-256/8", 4, 16, dim=8, depth=1,
                                    patch_size=4, kernel_size=3)
  config = default_config.get_default_config()
  tx = optimizers.make_optimizer(config, 10)
  state = steps.TrainState.create(variables, tx)
  options = steps.StepOptions(num_classes=4, compute_dtype=compute_dtype)
  step = functools.partial(steps.train_step, model=module, tx=tx,
                           schedule=optimizers.make_schedule(config, 10),
                           options=options)
  jaxpr = jax.make_jaxpr(step)(state, tiny_model.synthetic_batch(0, 4),
                               jax.random.key(0), None)
  dtypes = set()
  for line in str(jaxpr).splitlines():
    if "dot_general" in line and "=" in line:
      dtypes.add(line.split("=")[0].split(":")[-1].strip().split("[")[0])
  return dtypes


def test_bfloat16_compute_reaches_the_model_layers(monkeypatch):
  # The model is built with the float32 default; the step must still run
  # its matmuls in bfloat16 (flax layers promote inputs to their own dtype).
  assert _matmul_dtypes("float32") == {"f32"}
  assert _matmul_dtypes("bfloat16") == {"bf16"}
  assert _matmul_dtypes("auto", monkeypatch, "tpu") == {"bf16"}


def test_state_rejects_unknown_collections():
  with pytest.raises(ValueError, match="collections \\['cache'\\]"):
    steps.TrainState.create({"params": {}, "cache": {}}, None)


def _gradients(module, variables, compute_dtype, batch):
  """The step's gradients: an SGD step at learning rate 1 subtracts them."""
  config = default_config.get_default_config()
  config.optim.update(name="sgd", schedule="constant", learning_rate=1.0,
                      momentum=0.0, weight_decay=0.0, grad_clip_norm=0.0)
  tx = optimizers.make_optimizer(config, 10)
  state = steps.TrainState.create(variables, tx)
  options = steps.StepOptions(num_classes=10, compute_dtype=compute_dtype)
  step = jax.jit(functools.partial(
      steps.train_step, model=module, tx=tx,
      schedule=optimizers.make_schedule(config, 10), options=options))
  new_state, _ = step(state, batch, jax.random.key(0), None)
  return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b),
                      state.params, new_state.params)


@pytest.mark.parametrize("name,kwargs", [
    # Patch 1 on 32x32: every bias gradient sums 8 * 32 * 32 = 8192 rows,
    # which nearly cancel before the BatchNorms.
    ("ConvMixer-256/8", dict(dim=16, depth=1, kernel_size=3, patch_size=1)),
    ("ViT-B_16", dict(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64,
                      patch_size=4)),
])
def test_bfloat16_gradients_match_float32_per_parameter(name, kwargs):
  # bfloat16 compute rounds every activation and gradient to 8 bits of
  # mantissa (relative 4e-3), so each parameter's gradient is within a few
  # percent of float32's. Sums of bfloat16 cotangents accumulated in
  # bfloat16 (autodiff of `x + bias` on XLA:CPU) gave this ConvMixer's bias
  # gradients errors of 13-38 times their size (etcjax/models/bias.py).
  from etcjax import models  # pylint: disable=g-import-not-at-top
  module, variables = models.create(name, 10, 32, **kwargs)
  if name.startswith("ViT"):
    # ViT's head starts at zero (vit_jax), which zeroes the body's gradients.
    head = dict(variables["params"]["head"])
    head["kernel"] = 0.1 * jax.random.normal(jax.random.key(1),
                                             head["kernel"].shape)
    variables = dict(variables, params=dict(variables["params"], head=head))
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, 8, dtype=np.int32)}
  low = _gradients(module, variables, "bfloat16", batch)
  high = _gradients(module, variables, "float32", batch)
  total = np.sqrt(sum(np.sum(g ** 2) for g in jax.tree.leaves(high)))

  def check(path, g, g_low):
    norm = np.linalg.norm(g)
    # Below that, zero in exact arithmetic (attention's key bias): noise.
    if norm >= 1e-6 * total:
      error = np.linalg.norm(g_low - g) / norm
      assert error < 0.05, (jax.tree_util.keystr(path), error, norm)

  jax.tree_util.tree_map_with_path(check, high, low)
