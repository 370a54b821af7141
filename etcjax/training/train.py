"""Training and evaluation loop: one code path for a CPU, a TPU host or a pod.

Every process runs this same function. Each feeds its share of every
global batch; jitted steps see global arrays sharded over all devices
(`etcjax.data.sharding`). State is checkpointed asynchronously and a
restarted run continues from the latest checkpoint exactly as if it had not
stopped: the step's randomness is `fold_in(seed, step)` and the input
pipeline restarts at the checkpoint's step.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import signal
import time
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from etcjax import encryption
from etcjax import errors
from etcjax import files
from etcjax import models
from etcjax.data import pipeline
from etcjax.models import key_adaptation
from etcjax.training import checkpointing
from etcjax.training import default_config
from etcjax.training import export as export_lib
from etcjax.training import metrics as metrics_lib
from etcjax.training import optimizers
from etcjax.data import sharding
from etcjax.training import steps

CONFIG_FILE = "config.json"


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Raised when the training loss or gradients become NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class Encryption:
  """How the images the model sees are encrypted (no key material).

  Attributes:
    scheme: scheme name, or None for plain images.
    block_size: block size, or None for plain images.
    fingerprint: the key's fingerprint, or None for plain images.
    plan: the plan of on-the-fly encryption, else None.
    on_device: the train/eval steps apply `plan`; False when the input
      pipeline encrypts on the host (JPEG-compressed encrypted images),
      for datasets encrypted on disk and for plain images.
    input_shape: `(H, W, C)` of the images the model sees.
  """

  scheme: Optional[str]
  block_size: Optional[int]
  fingerprint: Optional[str]
  plan: Optional[encryption.Plan]
  on_device: bool
  input_shape: Tuple[int, int, int]


def _load_key(config: ml_collections.ConfigDict) -> bytes:
  enc = config.encryption
  if enc.key_file:
    return encryption.load_key(enc.key_file)
  if enc.allow_ephemeral_key and not enc.fingerprint:
    key = encryption.generate_key()
    logging.warning(
        "No config.encryption.key_file: encrypting with a random key held in "
        "memory only (fingerprint %s). It is never written, so the trained "
        "model can only classify images already encrypted with it.",
        encryption.fingerprint(key))
    return key
  raise default_config.ConfigError(
      f"config.encryption.scheme={enc.scheme!r} with dataset "
      f"{config.dataset!r} encrypts on the fly and needs "
      "config.encryption.key_file (make one with `python -m etcjax.encrypt "
      "keygen --key_file=PATH`), or train on a dataset encrypted on disk "
      "(config.dataset='encrypted')")


def setup_encryption(config: ml_collections.ConfigDict,
                     info: pipeline.DatasetInfo) -> Encryption:
  """Resolves the run's encryption from the config and the dataset.

  Args:
    config: the training config.
    info: the dataset's `DatasetInfo`.

  Returns:
    The run's `Encryption`. For on-the-fly encryption it holds the plan;
    the key is loaded, used to make the plan and dropped.

  Raises:
    ValueError, KeyMismatchError: inconsistent config, wrong key.
  """
  enc = config.encryption
  if info.encrypted_on_disk:
    manifest = info.manifest
    return Encryption(manifest["scheme"], manifest["block_size"],
                      manifest["key_fingerprint"], None, False,
                      tuple(info.image_shape))
  if not enc.scheme:
    if enc.key_file:
      raise default_config.ConfigError(
          "config.encryption.key_file is set but config.encryption.scheme is "
          "empty (plain images); set a scheme, e.g. "
          "--config.encryption.scheme=etc, or drop the key file")
    return Encryption(None, None, None, None, False, tuple(info.image_shape))
  key = _load_key(config)
  plan = pipeline.encryption_plan(config, key)
  del key
  if plan.per_image:
    raise default_config.ConfigError(
        f"scheme {enc.scheme!r} uses a key per image; training encrypts "
        "batches with one plan. Use 'pe' or encrypt the dataset on disk")
  return Encryption(plan.scheme, plan.block_size, plan.fingerprint, plan,
                    not pipeline.host_encrypts(config),
                    tuple(plan.encrypted_shape))


def _load_pretrained(config: ml_collections.ConfigDict,
                     params: Dict[str, Any]) -> Dict[str, Any]:
  """Loads `config.pretrained_path` into the initial params.

  A model with a per-position patch embedding can start from a `.npz` with
  a shared one (e.g. ImageNet-21k): the shared kernel is loaded and
  repeated at every position (`key_adaptation.to_per_position`), which
  computes exactly what the checkpoint computes; `config.adapt_pretrained`
  then adapts each position to its block's transform.

  Args:
    config: the training config.
    params: the freshly initialised params (host arrays).

  Returns:
    The params to start from.
  """
  kernel_path = key_adaptation.patch_kernel_path(params)
  per_position = (kernel_path is not None
                  and np.ndim(_get(params, kernel_path)) == 5
                  and _npz_ndim(config.pretrained_path,
                                "/".join(kernel_path)) == 4)
  if per_position:
    num_positions = np.shape(_get(params, kernel_path))[0]
    params = key_adaptation.set_leaf(params, kernel_path,
                                     _get(params, kernel_path)[0])
  params = models.load_pretrained(config.pretrained_path, params, config.model)
  if per_position:
    params = key_adaptation.to_per_position(params, num_positions)
  return params


def _npz_ndim(path: str, name: str) -> Optional[int]:
  """Rank of one tensor of a `.npz` checkpoint (read lazily), else None."""
  if not str(path).endswith(".npz"):
    return None  # Our own orbax checkpoints match the model as they are.
  with np.load(os.path.expanduser(path), allow_pickle=False) as data:
    return data[name].ndim if name in data.files else None


def _get(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def _adaptation_plan(config: ml_collections.ConfigDict, enc: Encryption,
                     info: pipeline.DatasetInfo) -> encryption.Plan:
  """The plan to key-adapt the initial parameters with (`adapt_pretrained`).

  Args:
    config: the training config.
    enc: the run's encryption.
    info: the dataset's `DatasetInfo`.

  Returns:
    The on-the-fly plan, or, for a dataset encrypted on disk, the plan of
    `config.encryption.key_file` with the manifest's scheme, block size and
    steps (the key is checked against the manifest and dropped).

  Raises:
    ValueError: plain images, or an encrypted dataset without a key file.
    KeyMismatchError: the key file is not the dataset's key.
  """
  if enc.plan is not None:
    return enc.plan
  if not info.encrypted_on_disk:
    raise default_config.ConfigError(
        "config.adapt_pretrained=True adapts the model to encrypted images, "
        "but this run trains on plain images; set config.encryption.scheme "
        "(e.g. 'block_common') and config.encryption.key_file")
  if not config.encryption.key_file:
    raise default_config.ConfigError(
        "config.adapt_pretrained=True on a dataset encrypted on disk needs "
        "the key it was encrypted with: set config.encryption.key_file")
  manifest = info.manifest
  key = encryption.load_key(config.encryption.key_file)
  encryption.check_fingerprint(key, manifest["key_fingerprint"],
                               f"the encrypted dataset {config.data_dir}")
  plan = encryption.make_plan(key, manifest["scheme"],
                              tuple(manifest["image_shape"]),
                              manifest["block_size"], steps=manifest["steps"])
  del key
  return plan


def _adaptation_record(config: ml_collections.ConfigDict
                       ) -> Optional[Dict[str, Any]]:
  """The export's `adaptation` field (see `export.OPTIONAL_FIELDS`)."""
  if not config.adapt_pretrained:
    return None
  # Pretrained checkpoints (vit_jax's ImageNet-21k models) are public.
  return {"method": "key_adaptation.adapt at initialisation, then training",
          "source": config.pretrained_path or "fresh initialisation",
          "from_public_weights": bool(config.pretrained_path),
          "per_position": bool(config.model_kwargs.to_dict().get(
              "per_position_embedding", False))}


def _total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  if config.total_steps > 0:
    return int(config.total_steps)
  if config.num_epochs <= 0:
    raise default_config.ConfigError(
        "set config.total_steps > 0 or config.num_epochs > 0 (got "
        f"{config.total_steps} and {config.num_epochs})")
  return max(1, math.ceil(config.num_epochs * num_train / config.batch_size))


def _check_finite(values: Dict[str, float], step: int,
                  checkpoints: checkpointing.Checkpoints) -> None:
  bad = {k: v for k, v in values.items() if not math.isfinite(v)}
  if bad:
    last = checkpoints.latest_step()
    raise NonFiniteLossError(
        f"training diverged at step {step}: "
        + ", ".join(f"{k} is {v}" for k, v in sorted(bad.items()))
        + f". Stopped; the last checkpoint is "
        + (f"step {last} in {checkpoints.directory}" if last is not None
           else "none")
        + ". Lower config.optim.learning_rate, set "
        "config.optim.grad_clip_norm, or check the input data, then start "
        "again in a new workdir.")


class _TrainMetrics:
  """Means of the train steps' metrics over a logging interval.

  Reading a step's metrics waits for that step, so `add` reads the
  *previous* step's while the current one runs: the host never stalls the
  device, and divergence is caught one step late at most. Each read checks
  the values are finite.
  """

  def __init__(self, checkpoints: checkpointing.Checkpoints):
    """Starts with nothing pending.

    Args:
      checkpoints: the run's checkpoints, named in the divergence error
        (where to resume from).
    """
    self._checkpoints = checkpoints
    self._pending = None  # (step, metrics still on device), or None.
    self._sums: Dict[str, float] = {}
    self._count = 0

  def add(self, step: int, metrics: Dict[str, jax.Array]) -> None:
    """Reads the pending step's metrics, then holds `metrics` as pending.

    Args:
      step: the number of steps done including this one.
      metrics: that step's scalar metrics (global jax arrays).

    Raises:
      NonFiniteLossError: the previous step's metrics are NaN or inf.
    """
    self.flush()
    self._pending = (step, metrics)

  def flush(self) -> None:
    """Reads the pending step's metrics now (waits for that step).

    Raises:
      NonFiniteLossError: they are NaN or inf.
    """
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    values = jax.device_get(metrics)
    _check_finite(values, step, self._checkpoints)
    for k, v in values.items():
      self._sums[k] = self._sums.get(k, 0.0) + float(v)
    self._count += 1

  def means(self) -> Dict[str, float]:
    """The means over the steps read since the last call; starts anew.

    Returns:
      {name: mean}; call after `flush` so the latest step is included.
    """
    means = {k: v / self._count for k, v in self._sums.items()}
    self._sums, self._count = {}, 0
    return means


class _Preemption:
  """Turns SIGTERM into a flag checked between steps (single process only).

  Multi-host runs rely on orbax's preemption sync point instead: hosts
  receive the signal at different steps and must agree on where to stop.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _init_model(config, num_classes: int, input_shape, mesh, tx):
  """The module and a jitted initialiser of a sharded TrainState."""
  if input_shape[0] != input_shape[1] or input_shape[2] != 3:
    raise default_config.ConfigError(
        f"the model would see images of shape {tuple(input_shape)}, but the "
        "models take square RGB images (grayscale-based EtC, 'etc_gray', "
        "is for compression studies, not training)")
  module = models.build(config.model, num_classes,
                        **config.model_kwargs.to_dict())

  def init(rng):
    variables = models.init_variables(module, input_shape[0], rng)
    return steps.TrainState.create(variables, tx)

  return module, jax.jit(init, out_shardings=sharding.replicated(mesh))


def _evaluate(state, eval_fn, plan, host_plan, config, info, mesh
              ) -> Dict[str, float]:
  """Runs the whole eval split once; sums are over all hosts' examples."""
  local_batch = config.eval_batch_size // jax.process_count()
  num_batches = math.ceil(info.num_eval / config.eval_batch_size)
  it = pipeline.eval_iterator(config, jax.process_index(), jax.process_count(),
                              plan=host_plan)
  totals = None
  for _ in range(num_batches):
    local = next(it, None)
    if local is None:
      # This host ran out before the others: feed an all-padding batch so
      # every host runs the same number of (collective) steps.
      shape = (local_batch,) + tuple(info.image_shape)
      local = {"image": np.zeros(shape, np.uint8),
               "label": np.zeros((local_batch,), np.int32),
               "mask": np.zeros((local_batch,), bool)}
    out = eval_fn(state, sharding.global_batch(local, mesh), plan)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if next(it, None) is not None:
    raise RuntimeError(
        f"the eval pipeline yielded more than {num_batches} batches of "
        f"{local_batch} for {info.num_eval} eval examples on "
        f"{jax.process_count()} process(es)")
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  if int(totals["count"]) != info.num_eval:
    raise RuntimeError(
        f"evaluated {int(totals['count'])} examples but the eval split has "
        f"{info.num_eval}; the eval pipeline must yield each example exactly "
        "once over all hosts (mask marks padding)")
  return {"accuracy": totals["correct"] / totals["count"],
          "loss": totals["loss"] / totals["count"], "count": totals["count"]}


def _written_config(config: ml_collections.ConfigDict,
                    enc: Encryption) -> str:
  # The key file path is not secret and the key is never in the config;
  # record the fingerprint actually used.
  config = ml_collections.ConfigDict(config.to_dict())
  config.encryption.fingerprint = enc.fingerprint or ""
  return config.to_json_best_effort(indent=2, sort_keys=True) + "\n"


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What a run is (model, data, encryption, length); never the key.

  The checkpoints' metadata, `export/export.json` and `results.json` are
  views of this one record, so they cannot disagree about the run. Only
  the key's fingerprint is held.

  Attributes:
    config_name: `config.name`.
    model: `config.model`, the model's registry name.
    model_kwargs: `config.model_kwargs` as a plain dict.
    dataset: `config.dataset`.
    num_classes: K, the number of labels.
    label_names: the K label names, in label order.
    image_shape: `(H, W, 3)` of the plain images (`config.image_size`).
    input_shape: `(H, W, C)` of the images the model sees.
    scheme: encryption scheme, or None for plain images.
    block_size: block size, or None for plain images.
    key_fingerprint: the key's fingerprint, or None for plain images.
    jpeg_quality: JPEG quality factor of the encrypted images, or None.
    encryption_steps: the steps of a dataset encrypted on disk (from its
      manifest), else None.
    adaptation: the export's `adaptation` field (see
      `export.OPTIONAL_FIELDS`), or None.
    total_steps: optimizer steps of the whole run (> 0).
    steps_per_epoch: train examples / global batch size (a float).
  """

  config_name: str
  model: str
  model_kwargs: Dict[str, Any]
  dataset: str
  num_classes: int
  label_names: Tuple[str, ...]
  image_shape: Tuple[int, int, int]
  input_shape: Tuple[int, int, int]
  scheme: Optional[str]
  block_size: Optional[int]
  key_fingerprint: Optional[str]
  jpeg_quality: Optional[int]
  encryption_steps: Optional[Any]
  adaptation: Optional[Dict[str, Any]]
  total_steps: int
  steps_per_epoch: float

  @classmethod
  def create(cls, config: ml_collections.ConfigDict,
             info: pipeline.DatasetInfo, enc: Encryption,
             total_steps: int) -> "RunRecord":
    """The record of a run.

    Args:
      config: the training config.
      info: the dataset's `DatasetInfo`.
      enc: the run's encryption (`setup_encryption`).
      total_steps: optimizer steps of the whole run.

    Returns:
      The run's `RunRecord`.
    """
    return cls(
        config_name=config.name, model=config.model,
        model_kwargs=config.model_kwargs.to_dict(), dataset=config.dataset,
        num_classes=info.num_classes, label_names=tuple(info.label_names),
        image_shape=(config.image_size, config.image_size, 3),
        input_shape=tuple(enc.input_shape), scheme=enc.scheme,
        block_size=enc.block_size, key_fingerprint=enc.fingerprint,
        jpeg_quality=_jpeg_quality(config, info),
        encryption_steps=(info.manifest.get("steps")
                          if info.encrypted_on_disk else None),
        adaptation=_adaptation_record(config), total_steps=total_steps,
        steps_per_epoch=info.num_train / config.batch_size)

  def identity(self) -> Dict[str, Any]:
    """The checkpoints' metadata (`Checkpoints.save` adds 'step').

    Its `checkpointing.IDENTITY_FIELDS` must match for a workdir to be
    resumed; `config_name` is informative only.

    Returns:
      A JSON-serialisable dict (fresh copies; callers may change it).
    """
    return {
        "config_name": self.config_name, "model": self.model,
        "model_kwargs": copy.deepcopy(self.model_kwargs),
        "num_classes": self.num_classes,
        "input_shape": list(self.input_shape), "scheme": self.scheme,
        "block_size": self.block_size,
        "key_fingerprint": self.key_fingerprint,
    }

  def export_info(self, eval_accuracy: float) -> Dict[str, Any]:
    """The export's info (`export.save` adds 'format'; see `export.FIELDS`).

    Args:
      eval_accuracy: the final eval accuracy in [0, 1].

    Returns:
      A JSON-serialisable dict.
    """
    # Everything that identifies the run, plus what a user of the model
    # needs (labels, preprocessing) and how good it is.
    return dict(
        self.identity(), label_names=list(self.label_names),
        image_shape=list(self.image_shape), jpeg_quality=self.jpeg_quality,
        train_steps=self.total_steps, eval_accuracy=eval_accuracy,
        encryption_steps=copy.deepcopy(self.encryption_steps),
        adaptation=copy.deepcopy(self.adaptation))

  def results(self, eval_values: Dict[str, float], *,
              images_per_second: float, train_seconds: float,
              resumed_from_step: int, devices: int,
              processes: int) -> Dict[str, Any]:
    """The contents of `results.json`.

    Args:
      eval_values: the final eval metrics {'accuracy', 'loss', 'count'}
        (`_evaluate`).
      images_per_second: training throughput of this process's run; NaN
        or inf when not measured (written as None).
      train_seconds: wall time of this process's training loop.
      resumed_from_step: the step this process started at (0 if fresh).
      devices: `jax.device_count()` of this process's run.
      processes: `jax.process_count()` of this process's run.

    Returns:
      A JSON-serialisable dict.
    """
    return {
        "config_name": self.config_name,
        "model": self.model,
        "model_kwargs": copy.deepcopy(self.model_kwargs),
        "dataset": self.dataset,
        "scheme": self.scheme,
        "key_fingerprint": self.key_fingerprint,
        "eval_accuracy": eval_values["accuracy"],
        "eval_loss": eval_values["loss"],
        "eval_examples": int(eval_values["count"]),
        "steps": self.total_steps,
        "epochs": self.total_steps / self.steps_per_epoch,
        "images_per_second": _finite_or_none(images_per_second),
        "train_seconds_this_run": train_seconds,
        "resumed_from_step": resumed_from_step,
        "devices": devices,
        "processes": processes,
    }


@dataclasses.dataclass(frozen=True)
class StepFunctions:
  """A run's model and its jitted steps, as training runs them.

  Attributes:
    module: the Flax module.
    init: `init(rng) -> TrainState`, jitted, replicated over the mesh.
    train: `train(state, batch, plan=...) -> (state, metrics)`, jitted;
      donates `state`.
    evaluate: `evaluate(state, batch, plan) -> sums`, jitted.
    device_plan: the plan the steps apply (replicated over the mesh) when
      they encrypt on device, else None.
    host_plan: the plan the input pipeline encrypts with on the host (JPEG
      path), else None.
    compute_dtype: the resolved compute dtype ('float32' or 'bfloat16').
  """

  module: Any
  init: Callable[[jax.Array], steps.TrainState]
  train: Callable[..., Tuple[steps.TrainState, Dict[str, jax.Array]]]
  evaluate: Callable[..., Dict[str, jax.Array]]
  device_plan: Optional[encryption.Plan]
  host_plan: Optional[encryption.Plan]
  compute_dtype: str


def step_functions(config: ml_collections.ConfigDict,
                   info: pipeline.DatasetInfo, enc: Encryption,
                   mesh: jax.sharding.Mesh, total_steps: int,
                   rng: jax.Array) -> StepFunctions:
  """The model and jitted steps of a run (nothing is compiled yet).

  Args:
    config: the training config.
    info: the dataset's `DatasetInfo`.
    enc: the run's encryption (`setup_encryption`).
    mesh: the device mesh (`sharding.make_mesh`).
    total_steps: optimizer steps of the whole run (the learning-rate
      schedule's length).
    rng: the train step's base key; step `s` uses `fold_in(rng, s)`.

  Returns:
    The run's `StepFunctions`.

  Raises:
    ConfigError: an unknown compute dtype, or images the models cannot
      take.
  """
  try:
    compute_dtype = steps.resolve_compute_dtype(config.compute_dtype)
  except ValueError as e:
    raise default_config.ConfigError(f"config.{e}") from None
  schedule = optimizers.make_schedule(config, total_steps)
  tx = optimizers.make_optimizer(config, total_steps)
  module, init = _init_model(config, info.num_classes, enc.input_shape, mesh,
                             tx)
  aug = config.augment
  options = steps.StepOptions(
      num_classes=info.num_classes, encrypt=enc.on_device,
      label_smoothing=aug.label_smoothing, mixup_alpha=aug.mixup_alpha,
      cutmix_alpha=aug.cutmix_alpha, mix_prob=aug.mix_prob,
      switch_prob=aug.switch_prob, compute_dtype=compute_dtype)
  replicated = sharding.replicated(mesh)
  train_fn = jax.jit(
      functools.partial(steps.train_step, rng=rng, model=module, tx=tx,
                        schedule=schedule, options=options),
      out_shardings=(replicated, replicated), donate_argnums=0)
  eval_fn = jax.jit(
      functools.partial(steps.eval_step, model=module, options=options),
      out_shardings=replicated)
  return StepFunctions(
      module=module, init=init, train=train_fn, evaluate=eval_fn,
      device_plan=(sharding.replicate(enc.plan, mesh) if enc.on_device
                   else None),
      # The pipeline encrypts on the host (JPEG path) with the same plan.
      host_plan=(enc.plan if enc.plan is not None and not enc.on_device
                 else None),
      compute_dtype=compute_dtype)


@dataclasses.dataclass(frozen=True)
class _Finished:
  """What a training loop that reached the last step hands to the outputs.

  Attributes:
    state: the final `TrainState`.
    eval_values: the final eval metrics (`_evaluate`).
    images_per_second: this process's throughput (NaN if not measured).
    train_seconds: wall time of this process's loop.
  """

  state: steps.TrainState
  eval_values: Dict[str, float]
  images_per_second: float
  train_seconds: float


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Optional[Dict[str, Any]]:
  """`_train_and_evaluate` holding the workdir's lock (one run per workdir).

  Two runs in one workdir would interleave checkpoints and event files, so
  the first process locks a local workdir (`etcjax.files.locked_folder`;
  the kernel drops the lock of a killed run). Remote workdirs (gs://) are
  not locked.

  Raises:
    files.FolderLockedError: another run holds the workdir; the message
      names its pid and host.
  """
  path = os.fspath(workdir)
  if jax.process_index() != 0 or "://" in path:
    return _train_and_evaluate(config, workdir)
  with files.locked_folder(path, "etcjax training run",
                           "wait for it to finish, or choose another "
                           "--workdir"):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict,
                        workdir: str) -> Optional[Dict[str, Any]]:
  """Trains, evaluates, checkpoints and exports a model.

  Resumes from the latest checkpoint in `workdir/checkpoints` if any. At
  the end writes `workdir/export/` (see `export.py`) and
  `workdir/results.json`.

  Args:
    config: a training config (see `default_config.py`).
    workdir: the run's directory (local or gs://), shared by all hosts.

  Returns:
    The results dict written to results.json, or None when the run stopped
    early (preemption signal or `config.halt_after_step`) after saving a
    checkpoint to resume from.

  Raises:
    NonFiniteLossError: the loss or gradients became NaN/inf.
    ValueError, FileNotFoundError, KeyMismatchError: bad config, missing
      data, wrong key or a workdir of another run.
  """
  workdir = epath.Path(workdir)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
  info = pipeline.dataset_info(config)
  enc = setup_encryption(config, info)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, "config.batch_size")
  sharding.check_batch_size(config.eval_batch_size, "config.eval_batch_size")
  total_steps = _total_steps(config, info.num_train)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  fns = step_functions(config, info, enc, mesh, total_steps, train_rng)
  checkpoints = checkpointing.Checkpoints(
      workdir / "checkpoints", config.checkpoint_every_steps,
      config.keep_checkpoints, config.async_checkpointing)
  try:
    state, start_step, record = _start(config, workdir, info, enc, mesh, fns,
                                       checkpoints, total_steps, init_rng)
    finished = _train_loop(config, workdir, info, mesh, fns, checkpoints,
                           record, state, start_step)
  finally:
    checkpoints.close()
  if finished is None:  # Halted; the checkpoint resumes it.
    return None
  return _write_outputs(workdir, record, finished, start_step)


def _start(config: ml_collections.ConfigDict, workdir: epath.Path,
           info: pipeline.DatasetInfo, enc: Encryption,
           mesh: jax.sharding.Mesh, fns: StepFunctions,
           checkpoints: checkpointing.Checkpoints, total_steps: int,
           init_rng: jax.Array
           ) -> Tuple[steps.TrainState, int, RunRecord]:
  """The state this process starts from, and the run's record.

  Restores the latest checkpoint (which must be of this run: same model,
  geometry, scheme and key fingerprint), else builds the initial state.
  Then writes `workdir/config.json`, after the check, so a refused
  workdir keeps the config of the run it belongs to.

  Args:
    config: the training config.
    workdir: the run's directory.
    info: the dataset's `DatasetInfo`.
    enc: the run's encryption.
    mesh: the device mesh.
    fns: the run's `StepFunctions`.
    checkpoints: the run's checkpoints.
    total_steps: optimizer steps of the whole run.
    init_rng: the key of the initial parameters.

  Returns:
    `(state, start_step, record)`: the replicated `TrainState`, its step
    (0 for a fresh run) and the run's `RunRecord`.

  Raises:
    WorkdirMismatchError, KeyMismatchError: the workdir's checkpoints are
      of another run.
  """
  record = RunRecord.create(config, info, enc, total_steps)
  # Shapes and shardings only: orbax restores straight into place.
  state, start_step = checkpoints.restore_latest(
      jax.eval_shape(fns.init, init_rng), record.identity())
  if state is None:
    state, start_step = _initial_state(config, info, enc, mesh, fns,
                                       init_rng), 0
  if jax.process_index() == 0:
    (workdir / CONFIG_FILE).write_text(_written_config(config, enc))
  logging.info(
      "%s: model %s on %s images %s, %d train / %d eval examples, %d steps "
      "of %d (%.2f epochs) on %d devices / %d processes, from step %d, "
      "%s compute", config.name,
      models.describe(config.model, config.model_kwargs.to_dict()),
      enc.scheme or "plain", enc.input_shape,
      info.num_train, info.num_eval, total_steps, config.batch_size,
      total_steps / record.steps_per_epoch, jax.device_count(),
      jax.process_count(), start_step, fns.compute_dtype)
  return state, start_step, record


def _initial_state(config: ml_collections.ConfigDict,
                   info: pipeline.DatasetInfo, enc: Encryption,
                   mesh: jax.sharding.Mesh, fns: StepFunctions,
                   init_rng: jax.Array) -> steps.TrainState:
  """A fresh run's state: initialised, pretrained and key-adapted as set.

  Args:
    config: the training config (`pretrained_path`, `adapt_pretrained`).
    info: the dataset's `DatasetInfo`.
    enc: the run's encryption.
    mesh: the device mesh.
    fns: the run's `StepFunctions`.
    init_rng: the key of the initial parameters.

  Returns:
    The step-0 `TrainState`, replicated over the mesh.
  """
  state = fns.init(init_rng)
  # Loading and adapting work on host arrays, then re-replicate.
  if config.pretrained_path:
    params = _load_pretrained(config, jax.device_get(state.params))
    state = state.replace(params=sharding.replicate(params, mesh))
  if config.adapt_pretrained:
    params = key_adaptation.adapt(
        jax.device_get(state.params), _adaptation_plan(config, enc, info))
    state = state.replace(params=sharding.replicate(params, mesh))
    logging.info(
        "Key-adapted the initial parameters (%s) to %s images, block size "
        "%s, key fingerprint %s", config.pretrained_path or "fresh init",
        enc.scheme, enc.block_size, enc.fingerprint)
  return state


def _train_loop(config: ml_collections.ConfigDict, workdir: epath.Path,
                info: pipeline.DatasetInfo, mesh: jax.sharding.Mesh,
                fns: StepFunctions, checkpoints: checkpointing.Checkpoints,
                record: RunRecord, state: steps.TrainState,
                start_step: int) -> Optional[_Finished]:
  """Trains from `start_step` to the end, logging, evaluating and saving.

  Args:
    config: the training config (intervals, `halt_after_step`, pipeline).
    workdir: the run's directory (TensorBoard events go to its
      `tensorboard/`).
    info: the dataset's `DatasetInfo`.
    mesh: the device mesh.
    fns: the run's `StepFunctions`.
    checkpoints: the run's checkpoints (saved to, not closed).
    record: the run's `RunRecord` (its identity goes into checkpoints).
    state: the `TrainState` at `start_step` (donated to the first step).
    start_step: the step to start at.

  Returns:
    The final state and metrics, or None when the run halted early
    (preemption or `config.halt_after_step`) after saving a checkpoint.

  Raises:
    NonFiniteLossError: the loss or gradients became NaN/inf.
  """
  total_steps = record.total_steps
  identity = record.identity()
  writer = metrics_lib.MetricWriter(workdir, total_steps,
                                    record.steps_per_epoch)
  throughput = metrics_lib.Throughput(config.batch_size, total_steps)
  train_metrics = _TrainMetrics(checkpoints)
  preemption = _Preemption()
  eval_values = None
  train_start = time.perf_counter()
  try:
    train_iter = pipeline.train_iterator(
        config, start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count(), plan=fns.host_plan)
    for step in range(start_step, total_steps):
      batch = sharding.global_batch(next(train_iter), mesh)
      state, step_metrics = fns.train(state, batch, plan=fns.device_plan)
      done = step + 1
      train_metrics.add(done, step_metrics)
      halt = (done == config.halt_after_step or preemption.requested
              or checkpoints.reached_preemption(done))
      log_now = done % config.log_every_steps == 0 or done == total_steps
      eval_now = (done == total_steps or (
          config.eval_every_steps and done % config.eval_every_steps == 0))
      save_now = halt or done == total_steps or checkpoints.due(done)
      if log_now or eval_now or save_now:
        train_metrics.flush()  # Never save, log or evaluate a diverged state.
      throughput.update(done)
      if log_now:
        writer.train(done, train_metrics.means(), throughput)
      if save_now:
        checkpoints.save(done, state, identity, force=True)
      if eval_now:
        eval_values = _evaluate(state, fns.evaluate, fns.device_plan,
                                fns.host_plan, config, info, mesh)
        writer.eval(done, eval_values)
      if halt and done < total_steps:
        checkpoints.wait()
        logging.warning(
            "Stopped at step %d/%d (%s) after saving a checkpoint; run the "
            "same command again to resume.", done, total_steps,
            "preemption" if done != config.halt_after_step
            else "config.halt_after_step")
        return None
    train_seconds = time.perf_counter() - train_start
    checkpoints.wait()
    if eval_values is None:  # Resumed at the end: evaluate the final state.
      eval_values = _evaluate(state, fns.evaluate, fns.device_plan,
                              fns.host_plan, config, info, mesh)
      writer.eval(total_steps, eval_values)
  finally:
    preemption.restore()
    writer.close()
  return _Finished(state, eval_values, throughput.images_per_second,
                   train_seconds)


def _write_outputs(workdir: epath.Path, record: RunRecord,
                   finished: _Finished, start_step: int) -> Dict[str, Any]:
  """Writes `workdir/export/` and `workdir/results.json` (all processes).

  Args:
    workdir: the run's directory.
    record: the run's `RunRecord`.
    finished: what the training loop ended with.
    start_step: the step this process started at.

  Returns:
    The results dict written to results.json.
  """
  eval_values = finished.eval_values
  export_lib.save(workdir / "export", finished.state.variables(),
                  record.export_info(eval_values["accuracy"]))
  results = record.results(
      eval_values, images_per_second=finished.images_per_second,
      train_seconds=finished.train_seconds, resumed_from_step=start_step,
      devices=jax.device_count(), processes=jax.process_count())
  metrics_lib.write_results(workdir, results)
  logging.info("Done: eval accuracy %.4f after %d steps; results in %s",
               eval_values["accuracy"], record.total_steps,
               workdir / metrics_lib.RESULTS_FILE)
  return results


def _finite_or_none(value: float) -> Optional[float]:
  return value if math.isfinite(value) else None


def _jpeg_quality(config: ml_collections.ConfigDict,
                  info: pipeline.DatasetInfo) -> Optional[int]:
  if info.encrypted_on_disk:
    return info.manifest.get("jpeg_quality")
  return config.encryption.jpeg_quality
