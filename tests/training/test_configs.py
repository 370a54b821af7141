"""Every config file and variant: loads, names an existing model, fits it."""

import functools
import glob
import os

import jax
import pytest

from etcjax import encryption
from etcjax import models
from etcjax.training import default_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
EXPECTED = {"vit_plain", "vit_etc", "convmixer_cifar10_plain",
            "convmixer_cifar10_etc", "convmixer_imagenette_plain",
            "convmixer_imagenette_etc", "le", "ele", "etc_adaptation",
            "pe_resnet18", "vit_adapted"}


def _load(path):
  return default_config.load_sibling(os.path.basename(path), path)


def _variants(path):
  module = _load(path)
  variants = ["", "smoke"]
  if "cpu" in module.__doc__:
    variants += ["cpu"]
  if "qf85" in module.__doc__:
    variants += ["qf85", "smoke,qf80"]
  return variants


def test_every_experiment_has_a_config():
  assert {os.path.basename(p)[:-3] for p in CONFIGS} == EXPECTED
  assert "cpu" in _variants(os.path.join(ROOT, "configs", "convmixer_cifar10_plain.py"))
  assert "cpu" in _variants(os.path.join(ROOT, "configs", "convmixer_cifar10_etc.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_variants(path):
  module = _load(path)
  stem = os.path.basename(path)[:-3]
  assert "python -m etcjax.main --config=configs/" + stem in " ".join(
      module.__doc__.split()).replace("\\ ", "")
  for variant in _variants(path):
    config = module.get_config(variant)
    assert config.name == stem + (":" + ",".join(sorted(variant.split(",")))
                                  if variant else "")
    # Every field of the defaults is present with its type.
    defaults = default_config.get_default_config()
    assert set(config.keys()) == set(defaults.keys())
    module_ = models.build(config.model, 10, **config.model_kwargs.to_dict())
    shapes = jax.eval_shape(
        functools.partial(models.init_variables, module_, config.image_size),
        jax.random.key(0))
    assert shapes["params"]
    if config.encryption.scheme:
      scheme = encryption.get_scheme(config.encryption.scheme)
      block = config.encryption.block_size or scheme.default_block_size
      assert config.image_size % block == 0
      # No plain-domain augmentation on encrypted images.
      assert not config.augment.flip and not config.augment.randaugment
      assert config.augment.random_erasing == 0
      assert config.augment.crop in ("none", "resize")
    if "smoke" in variant:
      assert config.total_steps <= 20
      assert config.pretrained_path == ""
    if variant.startswith("qf") or ",qf" in variant:
      assert config.encryption.jpeg_quality == int(variant.split("qf")[1])
    else:
      assert config.encryption.jpeg_quality is None
  with pytest.raises(ValueError, match="unknown config variant"):
    module.get_config("tpu-huge")


def test_paper_hyperparameters():
  vit = _load(os.path.join(ROOT, "configs", "vit_etc.py")).get_config("")
  assert (vit.model, vit.batch_size, vit.total_steps, vit.image_size) == (
      "ViT-B_16", 512, 20_000, 224)
  assert (vit.optim.name, vit.optim.learning_rate, vit.optim.momentum,
          vit.optim.schedule, vit.optim.grad_clip_norm) == (
              "sgd", 0.03, 0.9, "warmup_cosine", 1.0)
  assert vit.pretrained_path.endswith("imagenet21k/ViT-B_16.npz")
  assert vit.encryption.block_size == 16
  plain = _load(os.path.join(ROOT, "configs", "vit_plain.py")).get_config("")
  assert plain.total_steps == 10_000 and not plain.encryption.scheme
  cm = _load(os.path.join(ROOT, "configs", "convmixer_cifar10_etc.py")).get_config("")
  assert (cm.model, cm.batch_size, cm.num_epochs) == ("ConvMixer-256/8", 64, 300)
  assert (cm.optim.name, cm.optim.learning_rate, cm.optim.weight_decay,
          cm.optim.schedule) == ("adamw", 0.01, 0.01, "one_cycle")
  assert cm.augment.mixup_alpha > 0 and cm.augment.cutmix_alpha > 0
  cp = _load(os.path.join(ROOT, "configs", "convmixer_cifar10_plain.py")).get_config("")
  assert cp.augment.randaugment and cp.augment.random_erasing > 0
  assert cp.augment.flip and cp.augment.crop == "random_crop_pad"
  # Plain and EtC differ only in encryption and augmentation.
  for field in ("model", "batch_size", "num_epochs", "optim", "image_size"):
    assert cm[field] == cp[field], field


def test_cpu_pair_differs_in_the_encryption_only():
  # The closing note compares their accuracies; any other difference would
  # leak into the ratio.
  plain = _load(os.path.join(ROOT, "configs", "convmixer_cifar10_plain.py")
                ).get_config("cpu").to_dict()
  etc = _load(os.path.join(ROOT, "configs", "convmixer_cifar10_etc.py")
              ).get_config("cpu").to_dict()
  differ = {k for k in plain if plain[k] != etc[k]}
  assert differ == {"name", "encryption"}
  assert plain["encryption"]["scheme"] in ("", None, "none")
  assert etc["encryption"]["scheme"] == "etc"
