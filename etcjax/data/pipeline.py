"""Training and evaluation input pipelines, configured by a training config.

    info = pipeline.dataset_info(config)
    for batch in pipeline.train_iterator(config, start_step=step,
                                         process_index=jax.process_index(),
                                         process_count=jax.process_count()):
      ...  # batch['image']: uint8 [B_local, H, W, C], batch['label']: int32

Where encryption happens:

* `config.dataset == 'encrypted'`: images come encrypted from disk
  (`python -m etcjax.encrypt encrypt`) and are read without the key; the
  manifest's scheme, block size and key fingerprint are checked against the
  config. Plain-domain augmentation is impossible there and is refused.
* on-the-fly encryption (`config.encryption.scheme` set, plain dataset):
  the pipeline yields PLAIN images after plain-domain augmentation and the
  jitted train step encrypts them on the device (`device_encrypts`) ...
* ... except with `config.encryption.jpeg_quality`, where the pipeline
  encrypts on the host and JPEG round-trips (`host_encrypts`); it then
  yields encrypted images.

Training batches are augmented per `config.augment` (crop, flip,
RandAugment, random erasing; mixup / CutMix / label smoothing are the train
step's, see `mixing`). Evaluation batches are not augmented: images of
another size are resized to `config.image_size`.

Order and augmentation are deterministic: see `sampling` for which examples
make up each step, and `augment` for the per-example stateless seeds.
Everything runs in tf.data (parallel, deterministic map; prefetch).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from etcjax import encryption
from etcjax.data import augment
from etcjax.data import encrypted_dataset
from etcjax.data import errors
from etcjax.data import host_encryption
from etcjax.data import randaugment
from etcjax.data import sampling
from etcjax.data import sources
from etcjax.encryption import plans

# TensorFlow only feeds the host here; it must not claim accelerator memory
# that JAX needs (a no-op when TF already initialised its devices).
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:
  pass

FOLDER = "folder"
ENCRYPTED = "encrypted"
# When reading fails, files of this many steps from the failing one are
# checked to name the culprit (tf.data reads ahead of the consumer).
_SEARCHED_STEPS = 8


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the pipeline of a config yields.

  Attributes:
    num_classes: number of classes K; labels are in [0, K).
    label_names: the K class names.
    num_train: examples in the training split.
    num_eval: examples in the evaluation split.
    image_shape: `(H, W, C)` of the yielded images: plain
      `(image_size, image_size, 3)` unless they are encrypted on disk or on
      the host, then the scheme's encrypted shape.
    encrypted_on_disk: the dataset is an encrypted dataset (never
      re-encrypted).
    manifest: the encrypted dataset's manifest, else None.
  """

  num_classes: int
  label_names: List[str]
  num_train: int
  num_eval: int
  image_shape: Tuple[int, int, int]
  encrypted_on_disk: bool
  manifest: Optional[Dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class _Settings:
  """The config fields the pipeline reads, validated."""

  dataset: str
  data_dir: Optional[str]
  train_split: str
  eval_split: str
  image_size: int
  batch_size: int
  eval_batch_size: int
  seed: int
  scheme: str  # '' = plain.
  block_size: Optional[int]  # resolved: the scheme's default when unset.
  key_file: str
  fingerprint: str
  jpeg_quality: Optional[int]
  crop: str
  flip: bool
  randaugment: Optional[Tuple[int, float]]
  random_erasing: float


def _field(config, dotted: str):
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      raise errors.DataError(
          f"the config lacks the field {dotted!r} that the input pipeline "
          "reads (see etcjax.training.default_config)") from None
  return node


def _settings(config) -> _Settings:
  """Reads and checks the pipeline's fields of a training config."""
  get = lambda name: _field(config, name)
  s = _Settings(
      dataset=get("dataset"), data_dir=get("data_dir") or None,
      train_split=get("train_split"), eval_split=get("eval_split"),
      image_size=get("image_size"), batch_size=get("batch_size"),
      eval_batch_size=get("eval_batch_size"), seed=get("seed"),
      scheme=get("encryption.scheme") or "",
      block_size=get("encryption.block_size") or None,
      key_file=get("encryption.key_file") or "",
      fingerprint=get("encryption.fingerprint") or "",
      jpeg_quality=get("encryption.jpeg_quality"),
      crop=get("augment.crop"), flip=bool(get("augment.flip")),
      randaugment=randaugment.parse(get("augment.randaugment") or ""),
      random_erasing=float(get("augment.random_erasing")))
  if not isinstance(s.dataset, str) or not s.dataset:
    raise errors.DataError(
        f"config.dataset must be a tfds name, {FOLDER!r} or {ENCRYPTED!r}, got "
        f"{s.dataset!r}")
  if s.dataset in (FOLDER, ENCRYPTED) and not s.data_dir:
    raise errors.DataError(
        f"config.dataset={s.dataset!r} needs config.data_dir, the dataset's "
        "root folder")
  for name in ("image_size", "batch_size", "eval_batch_size"):
    value = getattr(s, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise errors.DataError(f"config.{name} must be a positive integer, got {value!r}")
  if s.crop not in augment.CROP_MODES:
    raise errors.DataError(
        f"config.augment.crop must be one of {augment.CROP_MODES}, got {s.crop!r}")
  if not 0.0 <= s.random_erasing <= 1.0:
    raise errors.DataError(
        f"config.augment.random_erasing is a probability in [0, 1], got "
        f"{s.random_erasing}")
  if isinstance(s.seed, bool) or not isinstance(s.seed, int):
    raise errors.DataError(f"config.seed must be an integer, got {s.seed!r}")
  if s.scheme:
    scheme = encryption.get_scheme(s.scheme)  # Raises for unknown schemes.
    if s.block_size is None:
      s = dataclasses.replace(s, block_size=scheme.default_block_size)
  if s.jpeg_quality is not None:
    if not s.scheme:
      raise errors.DataError(
          "config.encryption.jpeg_quality is set but config.encryption.scheme "
          "is empty; JPEG compression applies to encrypted images only")
    if isinstance(s.jpeg_quality, bool) or not isinstance(s.jpeg_quality, int) \
        or not 1 <= s.jpeg_quality <= 100:
      raise errors.DataError(
          "config.encryption.jpeg_quality must be None or an integer in "
          f"[1, 100], got {s.jpeg_quality!r}")
  return s


def _host_encrypts(s: _Settings) -> bool:
  return bool(s.scheme) and s.dataset != ENCRYPTED and s.jpeg_quality is not None


def host_encrypts(config) -> bool:
  """Whether the pipeline yields images it encrypted itself (JPEG path).

  True for on-the-fly encryption with `config.encryption.jpeg_quality`: the
  train and eval steps must then not encrypt again.

  Args:
    config: a training config.

  Returns:
    A bool.
  """
  return _host_encrypts(_settings(config))


def device_encrypts(config) -> bool:
  """Whether the train/eval step must encrypt the yielded (plain) images.

  Args:
    config: a training config.

  Returns:
    True for on-the-fly encryption without JPEG; False for plain training,
    encrypted datasets and host-side encryption.
  """
  s = _settings(config)
  return bool(s.scheme) and s.dataset != ENCRYPTED and not _host_encrypts(s)


def encryption_plan(config, key: Optional[bytes] = None) -> plans.Plan:
  """The plan of on-the-fly encryption for images of `config.image_size`.

  Args:
    config: a training config with `encryption.scheme` set.
    key: the secret key; None loads `config.encryption.key_file`. Either
      way it is checked against `config.encryption.fingerprint` when that
      is set, and only its fingerprint is kept (in the plan).

  Returns:
    A `Plan` for plain images `(image_size, image_size, 3)`.

  Raises:
    ValueError: no scheme, or neither a key nor a key file.
    KeyMismatchError: the key's fingerprint differs from the config's.
  """
  s = _settings(config)
  if not s.scheme:
    raise errors.DataError("config.encryption.scheme is empty: nothing to encrypt")
  where = "the given key"
  if key is None:
    if not s.key_file:
      raise errors.DataError(
          "on-the-fly encryption needs a key: set config.encryption.key_file "
          "(made by `python -m etcjax.encrypt keygen`), or pass an in-memory "
          "key / plan")
    key = encryption.load_key(s.key_file)
    where = f"key file {s.key_file}"
  if s.fingerprint and encryption.fingerprint(key) != s.fingerprint:
    raise encryption.KeyMismatchError(
        f"wrong key: {where} has fingerprint {encryption.fingerprint(key)}, but "
        f"config.encryption.fingerprint is {s.fingerprint}")
  return encryption.make_plan(key, s.scheme,
                              (s.image_size, s.image_size, 3), s.block_size)


def _encrypted_shape(s: _Settings) -> Tuple[int, int, int]:
  if encryption.get_scheme(s.scheme).representation == plans.YCBCR_GRAY:
    return (s.image_size, 3 * s.image_size, 1)
  return (s.image_size, s.image_size, 3)


def _read_manifest(s: _Settings, splits: Tuple[str, ...]) -> Dict[str, Any]:
  """Reads an encrypted dataset's manifest and checks it against the config."""
  manifest = encrypted_dataset.read_manifest(s.data_dir)
  for split in splits:
    # A slice ('train[:2048]') is of the manifest's split 'train'.
    name = sources.parse_split(split)[0]
    encrypted_dataset.check_manifest(manifest, scheme=s.scheme or None,
                                     block_size=s.block_size,
                                     fingerprint=s.fingerprint or None,
                                     split=name, root=s.data_dir)
    # Refused up front, not at the first batch: no hashes, no damage check.
    encrypted_dataset.split_hashes(s.data_dir, manifest, name, [])
  if s.jpeg_quality is not None and manifest["jpeg_quality"] != s.jpeg_quality:
    raise errors.DataError(
        f"config.encryption.jpeg_quality is {s.jpeg_quality} but the encrypted "
        f"dataset {s.data_dir} is {manifest['codec']} with quality "
        f"{manifest['jpeg_quality']}; its images are never re-encoded")
  side = manifest["image_shape"][0]
  if s.image_size != side or manifest["image_shape"][1] != side:
    raise errors.DataError(
        f"config.image_size is {s.image_size} but the encrypted dataset "
        f"{s.data_dir} holds images encrypted at {manifest['image_shape']}; "
        "encrypted images cannot be resized, set image_size to their size")
  refused = []
  if s.crop not in ("none", "resize"):
    refused.append(f"augment.crop={s.crop!r} (use 'none')")
  if s.flip:
    refused.append("augment.flip=True")
  if s.randaugment:
    refused.append("augment.randaugment")
  if s.random_erasing:
    refused.append("augment.random_erasing")
  if refused:
    raise errors.DataError(
        f"images of the encrypted dataset {s.data_dir} are encrypted on disk, "
        "so plain-domain augmentation cannot be applied to them; turn off "
        f"{', '.join(refused)} (mixup / CutMix in the train step still work)")
  return manifest


def _load(s: _Settings, split: str,
          manifest: Optional[Dict[str, Any]]) -> sources.Source:
  # Folders and encrypted datasets take the same split specs as tfds
  # ('train[:2048]'): the named split, then its slice.
  name = sources.parse_split(split)[0]
  if s.dataset == ENCRYPTED:
    return sources.select(
        sources.load_encrypted_split(s.data_dir, name, manifest), split)
  if s.dataset == FOLDER:
    return sources.select(sources.load_folder_split(s.data_dir, name), split)
  return sources.load_tfds_split(s.dataset, split, s.data_dir)


def _check_crop(s: _Settings, source: sources.Source) -> None:
  """Refuses up front what `augment.crop` would refuse per image."""
  if (s.crop == "none" and s.dataset != ENCRYPTED and source.image_shape
      and tuple(source.image_shape[:2]) != (s.image_size, s.image_size)):
    raise errors.DataError(
        f"augment.crop='none' needs images of exactly {s.image_size}x"
        f"{s.image_size} (config.image_size; set augment.crop='resize' to "
        f"resize them), but {source.description} has "
        f"{source.image_shape[0]}x{source.image_shape[1]} images")


def _split_size(s: _Settings, split: str) -> Tuple[int, List[str]]:
  """(size, label names) of a tfds split from metadata, without reading it."""
  from etcjax.data import tfds_source  # pylint: disable=g-import-not-at-top
  try:
    return (tfds_source.split_size(s.dataset, split, s.data_dir),
            tfds_source.label_names(s.dataset, s.data_dir))
  except KeyError:
    # Metadata of an unprepared dataset has no splits; loading raises the
    # FileNotFoundError that names the folder and how to prepare it.
    sources.load_tfds_split(s.dataset, split, s.data_dir)
    raise


def dataset_info(config) -> DatasetInfo:
  """Describes what the pipelines of a config yield, without reading images.

  Args:
    config: a training config (see the module docstring).

  Returns:
    A `DatasetInfo`.

  Raises:
    FileNotFoundError: a tfds dataset is not prepared in `config.data_dir`,
      or a folder / encrypted dataset does not exist.
    ValueError, KeyMismatchError: invalid config, or an encrypted dataset
      that differs from the config (scheme, block size, key fingerprint).
  """
  s = _settings(config)
  manifest = None
  if s.dataset == ENCRYPTED:
    manifest = _read_manifest(s, (s.train_split, s.eval_split))
    train, evals = (len(_load(s, split, manifest))
                    for split in (s.train_split, s.eval_split))
    names = list(manifest["label_names"])
    shape = tuple(manifest["encrypted_shape"])
  elif s.dataset == FOLDER:
    train_source = _load(s, s.train_split, None)
    eval_source = _load(s, s.eval_split, None)
    _check_same_classes(train_source, eval_source)
    train, evals = len(train_source), len(eval_source)
    names = train_source.label_names
  else:
    train, names = _split_size(s, s.train_split)
    evals, _ = _split_size(s, s.eval_split)
  if s.dataset != ENCRYPTED:
    shape = (_encrypted_shape(s) if _host_encrypts(s)
             else (s.image_size, s.image_size, 3))
  return DatasetInfo(num_classes=len(names), label_names=list(names),
                     num_train=train, num_eval=evals, image_shape=shape,
                     encrypted_on_disk=s.dataset == ENCRYPTED,
                     manifest=manifest)


def _check_same_classes(train: sources.Source, evals: sources.Source) -> None:
  if train.label_names != evals.label_names:
    raise errors.DataError(
        f"{train.description} and {evals.description} have different class "
        f"folders ({train.label_names[:5]}... vs {evals.label_names[:5]}...); "
        "labels would not match")


def _host_encryptor(s: _Settings, config, plan: Optional[plans.Plan]
                    ) -> Optional[host_encryption.Encryptor]:
  """The host-side encryptor when the pipeline encrypts, else None."""
  if not _host_encrypts(s):
    return None
  if plan is None:
    plan = encryption_plan(config)
  expected = (s.image_size, s.image_size, 3)
  if (plan.scheme, plan.image_shape, plan.block_size) != (
      s.scheme, expected, s.block_size):
    raise errors.DataError(
        f"the plan is for scheme {plan.scheme!r}, block size "
        f"{plan.block_size}, images {plan.image_shape}; the config asks for "
        f"{s.scheme!r}, block size {s.block_size}, images {expected}")
  if s.fingerprint and plan.fingerprint != s.fingerprint:
    raise encryption.KeyMismatchError(
        f"the plan was made with key fingerprint {plan.fingerprint}, but "
        f"config.encryption.fingerprint is {s.fingerprint}")
  host_encryption.check_jpeg(plan, s.jpeg_quality)
  return host_encryption.Encryptor(plan)


def _example_fn(s: _Settings, source: sources.Source, train: bool,
                encryptor: Optional[host_encryption.Encryptor]):
  """The per-example tf.data map: decode, augment, (encrypt + JPEG)."""

  # Plain graph code (explicit tf.cond / tf.switch_case): skipping
  # AutoGraph's source conversion saves seconds per pipeline.
  @tf.autograph.experimental.do_not_convert
  def fn(example):
    data = None
    if source.images is not None:
      image = example["image"]
    else:
      if source.hashes is not None:
        data = tf.io.read_file(example["path"])
      image = source.decode(example["path"], data)
    if s.dataset != ENCRYPTED:
      # Seeded by (data seed, position in the global example stream).
      seed = tf.stack([tf.constant(s.seed, tf.int64), example["position"]])
      seeds = augment.split_seed(seed, 4)
      image = augment.crop(image, s.crop, s.image_size, seeds[0], train)
      if train and s.flip:
        image = augment.random_flip(image, seeds[1])
      if train and s.randaugment:
        image = randaugment.randaugment(image, *s.randaugment, seeds[2])
      if train and s.random_erasing:
        image = augment.random_erasing(image, s.random_erasing, seeds[3])
      if encryptor is not None:
        image = host_encryption.jpeg_round_trip(encryptor(image),
                                                s.jpeg_quality)
    out = dict(example, image=image)
    out.pop("path", None)
    if data is not None:
      out["data"] = data  # hashed per batch by `_check_hashes`
    return out

  return fn


def _dataset(s: _Settings, source: sources.Source, examples, start: int,
             stop: Optional[int], local_batch: int, train: bool,
             encryptor) -> tf.data.Dataset:
  """tf.data yielding the preprocessed batches of steps [start, stop).

  Args:
    examples: maps a step (int) to numpy 'index' and 'position' int64
      `[local_batch]` (plus 'mask' bool for eval).
    start, stop: the steps to yield; stop None = endless.
  """
  keys = ["label", "position"] + (["mask"] if not train else [])
  keys.append("image" if source.images is not None else "path")
  if source.hashes is not None:
    keys.append("index")  # which file, for the per-batch hash check

  def fetch(step):
    batch = examples(int(step))
    index = batch["index"]
    batch["label"] = source.labels[index]
    if source.images is not None:
      batch["image"] = source.images[index]
    else:
      batch["path"] = source.paths[index]
    return [batch[k] for k in keys]

  dtypes = {"label": tf.int32, "position": tf.int64, "mask": tf.bool,
            "image": tf.uint8, "path": tf.string, "index": tf.int64}

  @tf.autograph.experimental.do_not_convert
  def fetch_tf(step):
    values = tf.numpy_function(fetch, [step], [dtypes[k] for k in keys],
                               stateful=False)
    batch = dict(zip(keys, values))
    for k in keys:
      shape = (local_batch,)
      if k == "image":
        shape += source.images.shape[1:]
      batch[k] = tf.ensure_shape(batch[k], shape)
    return batch

  # Only the small per-step fetch runs in Python; the map over examples is
  # parallel TensorFlow.
  ds = tf.data.Dataset.range(start, np.iinfo(np.int64).max if stop is None
                             else stop)
  ds = ds.map(fetch_tf).unbatch()
  ds = ds.map(_example_fn(s, source, train, encryptor),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  if source.hashes is not None:
    ds = ds.map(_check_hashes(source), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  # Input pipelines run many small ops; one thread per op avoids contending
  # with the parallel map (and with the JAX computation) for cores.
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def _check_hashes(source: sources.Source):
  """The per-batch map checking files against their recorded hashes.

  The files' bytes come from the per-example map (read once, in parallel).
  Each file is SHA-256'd against the manifest once per Source, in one
  Python call per batch (`Source.check_hashes`), which records the
  farmhash64 fingerprint (`tf.fingerprint`) of the bytes that matched.
  Later epochs only fingerprint the batch in the graph and compare with
  the recorded fingerprints, held in variables indexed by file: no Python
  call while every file of a batch matches. Files not verified yet, or
  whose fingerprint differs, go to `check_hashes`, which hashes the first
  and fails the second. A damaged file fails the batch before it is
  yielded; `_numpy_batches` then names the file.

  The fingerprint catches accidental change (a 64-bit checksum), not a
  replacement crafted to collide with farmhash64: that needs write access
  to the dataset during training, and the next run's SHA-256 pass catches
  it.
  """
  done, fingerprints = source.verified_fingerprints()
  # Written only after `check_hashes` accepted the file, fingerprint before
  # flag; a stale or racing read can only send a file to `check_hashes`,
  # whose own record (under its lock) decides.
  done_var = tf.Variable(done, trainable=False, name="hash_checked")
  fingerprint_var = tf.Variable(fingerprints, trainable=False,
                                name="hash_checked_fingerprint")

  def check_in_python(index, data, fingerprint, known):
    unknown = tf.where(tf.logical_not(known))[:, 0]
    index = tf.gather(index, unknown)
    fingerprint = tf.gather(fingerprint, unknown)
    ok = tf.numpy_function(source.check_hashes,
                           [index, tf.gather(data, unknown), fingerprint],
                           tf.bool, stateful=True)
    ok = tf.ensure_shape(ok, ())

    def record():
      at = index[:, None]
      wrote = fingerprint_var.scatter_nd_update(at, fingerprint)
      with tf.control_dependencies([wrote]):
        flagged = done_var.scatter_nd_update(
            at, tf.ones_like(index, tf.bool))
      with tf.control_dependencies([flagged]):
        return tf.identity(ok)

    return tf.cond(ok, record, lambda: ok)

  @tf.autograph.experimental.do_not_convert
  def fn(batch):
    batch = dict(batch)
    data, index = batch.pop("data"), batch.pop("index")
    fingerprint = tf.bitcast(tf.fingerprint(data), tf.int64)  # [B]
    known = tf.logical_and(
        tf.gather(done_var, index),
        tf.equal(tf.gather(fingerprint_var, index), fingerprint))
    ok = tf.cond(tf.reduce_all(known), lambda: tf.constant(True),
                 lambda: check_in_python(index, data, fingerprint, known))
    check = tf.debugging.Assert(
        ok, [f"a file of {source.description} differs from its recorded "
             "hash"])
    with tf.control_dependencies([check]):
      batch["image"] = tf.identity(batch["image"])
    return batch

  return fn


def _tf_error_message(error: tf.errors.OpError) -> str:
  """The useful part of a tf.data error (drops graph node decorations)."""
  message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error.message)
  message = re.split(r"\n\s*\[\[\{\{node|\s*\[Op:", message)[0]
  if message.startswith("assertion failed:"):
    # tf.debugging assertions print their data as "[item] [item] ...".
    message = " ".join(re.findall(r"\[([^\[\]]*)\]", message))
  return message.replace("\\'", "'").strip()


def _numpy_batches(ds: tf.data.Dataset, source: sources.Source,
                   keys: Tuple[str, ...], examples, start: int,
                   stop: Optional[int]) -> Iterator[Dict]:
  """Yields numpy batches; turns tf.data errors into messages naming files."""
  iterator = ds.as_numpy_iterator()
  step = start
  while stop is None or step < stop:
    try:
      batch = next(iterator)
    except tf.errors.OpError as e:
      detail = None
      if source.paths is not None:
        # The failing example is in this step or one prefetched after it.
        last = step + _SEARCHED_STEPS if stop is None else min(
            stop, step + _SEARCHED_STEPS)
        indices = np.concatenate([examples(k)["index"] for k in range(step, last)])
        if source.hashes is not None:
          try:
            source.read_verified(indices)
          except encrypted_dataset.DamagedFileError as damaged:
            raise encrypted_dataset.DamagedFileError(
                f"reading {source.description} failed at step {step}: "
                f"{damaged}") from None
        detail = sources.find_unreadable(source.paths[indices])
      raise errors.DataError(
          f"reading {source.description} failed at step {step}: "
          f"{detail or _tf_error_message(e)}") from None
    yield {k: batch[k] for k in keys}
    step += 1


def train_iterator(config, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1, *,
                   plan: Optional[plans.Plan] = None) -> Iterator[Dict]:
  """This host's endless stream of training batches, from `start_step` on.

  Batch s is the same whether the run started at 0 or resumed at s, and the
  hosts' batches of a step are disjoint slices of one global batch that
  does not depend on the number of hosts.

  Args:
    config: a training config.
    start_step: the first global step to yield (e.g. a restored step).
    process_index: this host's index (`jax.process_index()`).
    process_count: number of hosts (`jax.process_count()`).
    plan: for host-side encryption (`host_encrypts(config)`), the plan to
      encrypt with; None loads `config.encryption.key_file`. Unused
      otherwise.

  Yields:
    {'image': uint8 `[B_local] + info.image_shape`, 'label': int32
    `[B_local]`} with B_local = batch_size // process_count.
  """
  s = _settings(config)
  if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) \
      or start_step < 0:
    raise errors.DataError(f"start_step must be an integer >= 0, got {start_step!r}")
  manifest = _read_manifest(s, (s.train_split,)) if s.dataset == ENCRYPTED else None
  source = _load(s, s.train_split, manifest)
  _check_crop(s, source)
  order = sampling.TrainOrder(len(source), s.batch_size, s.seed, process_index,
                              process_count)
  encryptor = _host_encryptor(s, config, plan)

  def examples(step):
    index, position = order.step(step)
    return {"index": index, "position": position}

  ds = _dataset(s, source, examples, start_step, None,
                order.local_batch_size, True, encryptor)

  return _numpy_batches(ds, source, ("image", "label"), examples, start_step,
                        None)


def eval_iterator(config, process_index: int = 0, process_count: int = 1, *,
                  plan: Optional[plans.Plan] = None) -> Iterator[Dict]:
  """This host's batches of one pass over the evaluation split.

  All hosts yield the same number of batches; together they cover every
  example exactly once. The last batch is padded with example 0, masked.

  Args:
    config: a training config.
    process_index: this host's index.
    process_count: number of hosts.
    plan: as for `train_iterator`.

  Yields:
    {'image': uint8 `[B_local] + info.image_shape`, 'label': int32
    `[B_local]`, 'mask': bool `[B_local]`, False on padding} with
    B_local = eval_batch_size // process_count.
  """
  s = _settings(config)
  manifest = _read_manifest(s, (s.eval_split,)) if s.dataset == ENCRYPTED else None
  source = _load(s, s.eval_split, manifest)
  _check_crop(s, source)
  if s.dataset == FOLDER:
    _check_same_classes(_load(s, s.train_split, None), source)
  encryptor = _host_encryptor(s, config, plan)
  eval_list = list(sampling.eval_batches(len(source), s.eval_batch_size,
                                         process_index, process_count))

  def examples(step):
    index, mask = eval_list[step]
    # Eval is not random; positions only feed the (unused) augment seeds.
    return {"index": index, "position": index, "mask": mask}

  ds = _dataset(s, source, examples, 0, len(eval_list),
                s.eval_batch_size // process_count, False, encryptor)

  return _numpy_batches(ds, source, ("image", "label", "mask"), examples, 0,
                        len(eval_list))
