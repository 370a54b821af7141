"""Pure train and eval steps, jitted by the caller with shardings.

A step sees global batches of uint8 images. With on-the-fly encryption the
plan is applied here, on device, after the pipeline's plain-domain
augmentation and before mixup/CutMix, so the model only ever sees
encrypted images. The plan is an explicit argument rather than part of the
train state because the state is checkpointed and the plan's arrays decrypt
images as well as the key does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from etcjax import encryption
from etcjax.data import mixing

Metrics = Dict[str, jax.Array]

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# 'auto' resolves per backend: bfloat16 where the matrix units run it at full
# rate (TPU MXU, GPU tensor cores), float32 on CPU, where XLA emulates
# bfloat16 matmuls and they are slower than float32.
AUTO_COMPUTE_DTYPE = {"tpu": "bfloat16", "gpu": "bfloat16", "cuda": "bfloat16",
                      "rocm": "bfloat16"}


def resolve_compute_dtype(name: str, backend: Optional[str] = None) -> str:
  """The compute dtype a config's `compute_dtype` means on a backend.

  Args:
    name: 'auto', 'float32' or 'bfloat16'.
    backend: a `jax.default_backend()` name ('cpu', 'tpu', 'gpu', ...);
      None = the current default backend.

  Returns:
    'float32' or 'bfloat16': `name` itself unless it is 'auto', which is
    'bfloat16' on TPU and GPU and 'float32' elsewhere.

  Raises:
    ValueError: `name` is none of these.
  """
  if name == "auto":
    backend = jax.default_backend() if backend is None else backend
    return AUTO_COMPUTE_DTYPE.get(backend, "float32")
  if name not in COMPUTE_DTYPES:
    raise ValueError(
        f"compute_dtype must be 'auto' or one of {sorted(COMPUTE_DTYPES)}, "
        f"got {name!r}")
  return name


@flax.struct.dataclass
class TrainState:
  """Everything a training run updates; checkpointed as a whole.

  Attributes:
    step: int32 scalar, the number of optimizer steps taken (also the data
      position: the pipeline's batch index of the next step).
    params: float32 model parameters.
    batch_stats: BatchNorm running statistics (`{}` for models without).
    opt_state: the optimizer state.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @classmethod
  def create(cls, variables: Dict[str, Any],
             tx: optax.GradientTransformation) -> "TrainState":
    """Builds the state at step 0.

    Args:
      variables: a model's variables, {'params': ..., ['batch_stats': ...]}.
      tx: the optimizer.

    Returns:
      A `TrainState` with step 0 and a fresh optimizer state.
    """
    unknown = set(variables) - {"params", "batch_stats"}
    if unknown:
      raise ValueError(
          f"model variables have collections {sorted(unknown)}; training "
          "supports 'params' and 'batch_stats' only")
    params = variables["params"]
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats=variables.get("batch_stats", {}),
               opt_state=tx.init(params))

  def variables(self) -> Dict[str, Any]:
    """The model variables for inference: params (+ batch_stats)."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """Static settings of the steps (hashable, bound with functools.partial).

  Attributes:
    num_classes: K, the number of labels.
    encrypt: whether the step applies the plan (on-the-fly encryption on
      device); False for plain training, for datasets encrypted on disk and
      when the host pipeline already encrypted.
    label_smoothing: in [0, 1).
    mixup_alpha, cutmix_alpha, mix_prob, switch_prob: see
      `etcjax.data.mixing.mix`; mixing is off when both alphas are 0.
    compute_dtype: 'float32' or 'bfloat16' (forward and backward pass;
      parameters, optimizer and loss stay float32), or 'auto', resolved by
      `resolve_compute_dtype` for the backend when the step is traced.
  """

  num_classes: int
  encrypt: bool = False
  label_smoothing: float = 0.0
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_prob: float = 1.0
  switch_prob: float = 0.5
  compute_dtype: str = "float32"

  @property
  def mixes(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def normalize(images: jax.Array) -> jax.Array:
  """Maps pixel values to the models' input range.

  Args:
    images: `[N, H, W, C]` uint8 or float in [0, 255].

  Returns:
    float32 `[N, H, W, C]` in [-1, 1].
  """
  return images.astype(jnp.float32) / 127.5 - 1.0


def _model_images(batch: Dict[str, jax.Array], plan: Optional[encryption.Plan],
                  options: StepOptions) -> jax.Array:
  images = batch["image"]
  if options.encrypt:
    images = encryption.apply(plan, images)
  return images


def _cast_floats(tree: Any, dtype) -> Any:
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      tree)


def _forward(model: nn.Module, params, batch_stats, x: jax.Array,
             train: bool, rng: Optional[jax.Array], options: StepOptions):
  """Logits (float32) and, in training, the new BatchNorm statistics."""
  dtype = COMPUTE_DTYPES[resolve_compute_dtype(options.compute_dtype)]
  # Flax layers promote their inputs to the module's own `dtype`: a module
  # built with the float32 default would compute in float32 whatever it is
  # fed, so the step sets the dtype of modules that have one.
  if "dtype" in getattr(model, "__dataclass_fields__", {}) and (
      model.dtype != dtype):
    model = model.clone(dtype=dtype)
  variables = {"params": _cast_floats(params, dtype)}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  kwargs = {"rngs": {"dropout": rng}} if rng is not None else {}
  if train and batch_stats:
    logits, updates = model.apply(variables, x.astype(dtype), train=True,
                                  mutable=["batch_stats"], **kwargs)
    new_stats = _cast_floats(updates["batch_stats"], jnp.float32)
  else:
    logits = model.apply(variables, x.astype(dtype), train=train, **kwargs)
    new_stats = batch_stats
  return logits.astype(jnp.float32), new_stats


def train_step(state: TrainState, batch: Dict[str, jax.Array],
               rng: jax.Array, plan: Optional[encryption.Plan], *,
               model: nn.Module, tx: optax.GradientTransformation,
               schedule: Callable[[jax.Array], jax.Array],
               options: StepOptions) -> Tuple[TrainState, Metrics]:
  """One optimizer step on a global batch.

  Args:
    state: the current `TrainState`.
    batch: {'image': uint8 `[B, H, W, C]` in [0, 255] (plain when
      `options.encrypt`, else what the model sees), 'label': int32 `[B]` in
      [0, K)}.
    rng: the run's base PRNG key; the step's randomness (mixing, dropout)
      is `fold_in(rng, state.step)`, so a resumed run draws the same.
    plan: the encryption plan when `options.encrypt`, else None.
    model: the flax module; `model.apply(variables, x, train=...)` -> logits
      `[B, K]`.
    tx: the optimizer.
    schedule: the learning-rate schedule (for the metrics only).
    options: static step settings.

  Returns:
    `(new_state, metrics)`: metrics are float32 scalars 'loss' (mean
    cross-entropy against the mixed, smoothed labels), 'accuracy' (top-1
    against the unmixed labels, in [0, 1]), 'grad_norm' and
    'learning_rate' (the one used by this step).
  """
  step_rng = jax.random.fold_in(rng, state.step)
  mix_rng, dropout_rng = jax.random.split(step_rng)
  x = _model_images(batch, plan, options).astype(jnp.float32)
  targets = mixing.onehot(batch["label"], options.num_classes,
                          options.label_smoothing)
  if options.mixes:
    x, targets = mixing.mix(mix_rng, x, targets, options.mixup_alpha,
                            options.cutmix_alpha, options.mix_prob,
                            options.switch_prob)
  x = normalize(x)

  def loss_fn(params):
    logits, new_stats = _forward(model, params, state.batch_stats, x, True,
                                 dropout_rng, options)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, (logits, new_stats)

  (loss, (logits, new_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=new_stats, opt_state=opt_state)
  metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      "grad_norm": optax.tree.norm(grads),
      "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
  }
  return new_state, metrics


def eval_step(state: TrainState, batch: Dict[str, jax.Array],
              plan: Optional[encryption.Plan], *, model: nn.Module,
              options: StepOptions) -> Metrics:
  """Sums of eval metrics over one (possibly padded) global batch.

  Args:
    state: the `TrainState` to evaluate.
    batch: {'image': uint8 `[B, H, W, C]`, 'label': int32 `[B]`, 'mask':
      bool `[B]`, False for padding}.
    plan: the encryption plan when `options.encrypt`, else None.
    model: the flax module.
    options: static step settings (mixing and smoothing are not used).

  Returns:
    float32 scalars 'correct' (number of correct top-1 predictions),
    'loss' (summed cross-entropy) and 'count' (real examples), over the
    unpadded examples.
  """
  x = normalize(_model_images(batch, plan, options))
  logits, _ = _forward(model, state.params, state.batch_stats, x, False, None,
                       options)
  mask = batch["mask"].astype(jnp.float32)
  labels = batch["label"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {
      "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      "loss": jnp.sum(loss * mask),
      "count": jnp.sum(mask),
  }
