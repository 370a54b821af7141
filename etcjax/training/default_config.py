"""Every field a training config has, with its default and meaning.

The experiment files in `configs/` start from `get_default_config()` and
override what their experiment changes, so every config has every field
(and `--config.FIELD=...` overrides on the command line work for all of
them; ml_collections refuses unknown fields and type changes).
"""

from __future__ import annotations

import importlib.util
import os
import types
from typing import Iterable, Optional, Set

import ml_collections

from etcjax import errors


class ConfigError(errors.UserError, ValueError):
  """A config argument or field value the experiment does not offer."""

def get_default_config() -> ml_collections.ConfigDict:
  """Returns a config with every training field at its default.

  Returns:
    A `ConfigDict`; see the inline comments for each field's meaning.
  """
  config = ml_collections.ConfigDict()
  # Recorded in results.json and the export so runs can be told apart.
  config.name = "default"

  # --- Data (fields read by etcjax.data.pipeline). ---
  config.dataset = "cifar10"  # a tfds name, 'folder' or 'encrypted'
  # tfds data_dir ('' / None = tfds' default, what a connected user has);
  # for 'folder' / 'encrypted': the dataset root.
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.train_split = "train"
  config.eval_split = "test"
  config.image_size = 32  # side of the (plain) images the model sees
  config.batch_size = 64  # global, over all devices and hosts
  config.eval_batch_size = 500  # global
  config.seed = 0

  config.encryption = ml_collections.ConfigDict()
  config.encryption.scheme = ""  # '' = plain images; else a scheme name
  # 0 = the scheme's default block size.
  config.encryption.block_size = 0
  # On-the-fly encryption (research runs): path to a key file made with
  # `python -m etcjax.encrypt keygen`. Only the path is stored, never the key.
  config.encryption.key_file = ""
  # Expected key fingerprint ('' = don't check): checked against the key
  # file and against an encrypted dataset's manifest.
  config.encryption.fingerprint = ""
  # JPEG quality factor of encrypted images (4:2:0), None = no JPEG
  # (the paper's QF 85 / 80 rows train and test on JPEG-compressed images).
  # (A fresh placeholder per config: a shared one is a shared reference.)
  config.encryption.jpeg_quality = ml_collections.config_dict.placeholder(int)
  # Smoke runs only: with no key_file, encrypt with a random key that lives
  # in memory only (never written); the trained model is then usable only
  # on images that are already encrypted with that lost key.
  config.encryption.allow_ephemeral_key = False

  config.augment = ml_collections.ConfigDict()
  # 'random_crop_pad' (pad 4 + random crop), 'random_resized_crop',
  # 'resize', 'none'.
  config.augment.crop = "random_crop_pad"
  config.augment.flip = True
  config.augment.randaugment = ""  # e.g. 'n2-m9'
  config.augment.random_erasing = 0.0  # probability
  config.augment.mixup_alpha = 0.0
  config.augment.cutmix_alpha = 0.0
  config.augment.mix_prob = 1.0
  config.augment.switch_prob = 0.5
  config.augment.label_smoothing = 0.0

  # --- Model. ---
  config.model = "ConvMixer-256/8"  # a name in etcjax.models
  # Module attributes that change the named model (e.g. dim, depth,
  # patch_size of a ConvMixer), for smaller variants; {} = as named.
  config.model_kwargs = ml_collections.ConfigDict()
  # vit_jax .npz checkpoint to fine-tune from ('' = from scratch).
  config.pretrained_path = ""
  # Key-adapt the initial parameters (pretrained, else the fresh init) to
  # the run's encryption before training, so that the model starts out
  # classifying encrypted images as it classified plain ones (ViT: scheme
  # 'block_common' with block size = patch size; see
  # etcjax.models.key_adaptation). An export adapted from public weights
  # reveals the key; it is marked so and warned about.
  config.adapt_pretrained = False
  # 'auto' (bfloat16 on TPU and GPU, float32 on CPU), 'float32' or
  # 'bfloat16': the dtype of the forward and backward pass; parameters,
  # optimizer state, BatchNorm statistics and the loss stay float32.
  config.compute_dtype = "auto"

  # --- Optimisation. ---
  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adamw"  # 'sgd' (with momentum) or 'adamw'
  config.optim.learning_rate = 0.01  # peak learning rate
  config.optim.momentum = 0.9  # sgd
  config.optim.b1 = 0.9  # adamw
  config.optim.b2 = 0.999  # adamw
  # On kernels only; adamw: decoupled, sgd: L2 added to the gradient.
  config.optim.weight_decay = 0.0
  # 'warmup_cosine', 'one_cycle' (triangular) or 'constant'.
  config.optim.schedule = "one_cycle"
  config.optim.warmup_steps = 0  # warmup_cosine
  config.optim.grad_clip_norm = 0.0  # global-norm clipping, 0 = off

  # Length: total_steps when > 0, else num_epochs over the training set.
  config.total_steps = 0
  config.num_epochs = 1.0

  # --- Bookkeeping. ---
  config.log_every_steps = 50
  config.eval_every_steps = 0  # 0 = evaluate at the end only
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.async_checkpointing = True
  # Stop (after saving a checkpoint) once this step is reached, as a
  # preemption would; 0 = never. For testing resumption.
  config.halt_after_step = 0
  return config


def parse_variants(arg: Optional[str], allowed: Iterable[str]) -> Set[str]:
  """Parses a config argument such as 'smoke' or 'cpu,qf85'.

  Args:
    arg: comma-separated variant names ('' or None = none).
    allowed: the variant names the config file offers.

  Returns:
    The set of requested variants.

  Raises:
    ConfigError: a variant the config does not offer.
  """
  allowed = set(allowed)
  variants = {v.strip() for v in (arg or "").split(",") if v.strip()}
  unknown = variants - allowed
  if unknown:
    raise ConfigError(
        f"unknown config variant(s) {sorted(unknown)}; this config offers "
        f"{sorted(allowed)} (comma-separated, e.g. ':smoke' or ':smoke,qf85')")
  return variants


def name_run(config: ml_collections.ConfigDict, base: str,
             variants: Set[str]) -> None:
  """Sets `config.name` to the config file's name plus its variants.

  Args:
    config: the config to change in place.
    base: the config file's stem, e.g. 'vit_etc'.
    variants: as returned by `parse_variants`.
  """
  config.name = base + (":" + ",".join(sorted(variants)) if variants else "")


def apply_etc(config: ml_collections.ConfigDict, variants: Set[str],
              block_size: int = 16) -> None:
  """Turns a plain-image recipe into its EtC twin.

  Sets EtC encryption (and a 'qf85' / 'qf80' JPEG variant), and switches
  off plain-domain augmentation: the cloud only sees encrypted images.
  Resizing stays (the data owner resizes before encrypting, so random
  resized crops become plain resizing); mixup and CutMix stay (they work
  on encrypted images).

  Args:
    config: a plain-image config, changed in place.
    variants: as returned by `parse_variants`.
    block_size: EtC block size.
  """
  config.encryption.scheme = "etc"
  config.encryption.block_size = block_size
  apply_jpeg_variant(config, variants)
  use_encrypted_domain_augmentation(config)


def use_encrypted_domain_augmentation(config: ml_collections.ConfigDict
                                      ) -> None:
  """Keeps only the augmentation a cloud can apply to encrypted images.

  Plain-domain augmentation (random crops, flips, RandAugment, random
  erasing) goes; resizing, mixup, CutMix and label smoothing stay. Used by
  the EtC recipes, and by plain recipes that must differ from their EtC
  twin in the encryption only.

  Args:
    config: the config to change in place.
  """
  # Random crops are augmentation; resizing to image_size is preprocessing.
  resizes = config.augment.crop in ("resize", "random_resized_crop")
  config.augment.crop = "resize" if resizes else "none"
  config.augment.flip = False
  config.augment.randaugment = ""
  config.augment.random_erasing = 0.0


def apply_jpeg_variant(config: ml_collections.ConfigDict,
                       variants: Set[str]) -> None:
  """Applies a 'qf85' / 'qf80' variant: train and test on JPEG-compressed
  encrypted images (4:2:0) of that quality factor.

  Args:
    config: the config to change in place.
    variants: as returned by `parse_variants`.

  Raises:
    ValueError: more than one quality factor requested.
  """
  qualities = sorted(int(v[2:]) for v in variants if v.startswith("qf"))
  if len(qualities) > 1:
    raise ConfigError(f"at most one JPEG quality variant, got {qualities}")
  if qualities:
    config.encryption.jpeg_quality = qualities[0]


def apply_smoke_variant(config: ml_collections.ConfigDict) -> None:
  """Shortens a run to about a minute on a CPU.

  Keeps the experiment's data, scheme, optimizer and augmentation; cuts the
  run's length and the data it reads (2048 train and 500 eval images, as
  split slices that tfds, folder and encrypted datasets all read, so
  `--config.dataset=encrypted` works with it). The config file picks a
  small model itself.

  Args:
    config: the config to change in place.
  """
  config.total_steps = 20
  config.batch_size = 32
  config.eval_batch_size = 256
  config.train_split = config.train_split.split("[")[0] + "[:2048]"
  config.eval_split = config.eval_split.split("[")[0] + "[:500]"
  config.optim.warmup_steps = min(config.optim.warmup_steps, 5)
  config.log_every_steps = 5
  config.checkpoint_every_steps = 10
  config.eval_every_steps = 0
  # No key file needed: a throwaway in-memory key (see the field).
  config.encryption.allow_ephemeral_key = True


def load_sibling(filename: str, anchor: str) -> types.ModuleType:
  """Imports another config file from the folder of `anchor`.

  Lets an EtC config start from its plain twin, so the pair provably
  differs only where the experiment says (config files are loaded by path,
  not as a package, so they cannot import each other by name).

  Args:
    filename: e.g. 'convmixer_cifar10_plain.py'.
    anchor: the calling config's `__file__`.

  Returns:
    The loaded module (with its `get_config`).
  """
  path = os.path.join(os.path.dirname(os.path.abspath(anchor)), filename)
  spec = importlib.util.spec_from_file_location(
      "etcjax_config_" + filename.replace(".", "_"), path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
