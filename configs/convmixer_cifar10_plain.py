r"""ConvMixer-256/8 (patch 1, kernel 9) from scratch on plain CIFAR-10.

The paper's plain-image baseline for ConvMixer (96.07% test accuracy):
AdamW (lr 0.01, weight decay 0.01), triangular one-cycle schedule, batch
64, 300 epochs, with RandAugment, mixup, CutMix and random erasing on top
of the standard pad-4 random crop and horizontal flip.

    python -m etcjax.main --config=configs/convmixer_cifar10_plain.py \
        --workdir=/tmp/convmixer_cifar10_plain

Variants (`--config=...py:VARIANT`):
  smoke  ~1 minute on a CPU (20 steps on 2048 images).
  cpu    the full training set on 2 CPU cores in about 30 minutes (a
         smaller ConvMixer, 4 epochs); compare with `_etc:cpu`. It uses the
         EtC recipe's augmentation (mixup and CutMix only), so that the two
         `cpu` runs differ in the encryption alone: with the full plain
         recipe (RandAugment, random erasing, crop, flip) 4 epochs underfit
         (53.0% test accuracy, measured) and the ratio would compare
         regularisation strengths, not plain vs encrypted images.
"""

from etcjax.training import default_config

# ConvMixer-256/8 with kernel 9 and patch 1 (the paper's CIFAR-10 model).
MODEL = "ConvMixer-256/8"
# A smaller ConvMixer for CPUs (patch 4: an 8x8 token grid). Measured on
# the shared 2-core machine (load ~6): ~95 images/s for both the plain and
# the EtC recipe, i.e. ~33 minutes for 4 epochs (benchmarks/train_step.py).
CPU_MODEL_KWARGS = {"dim": 128, "depth": 6, "patch_size": 4, "kernel_size": 5}
CPU_EPOCHS = 4.0
SMOKE_MODEL_KWARGS = {"dim": 32, "depth": 2, "patch_size": 2, "kernel_size": 3}


def get_config(arg=None):
  """Returns the config; `arg` is '' or a comma-separated variant list."""
  variants = default_config.parse_variants(arg, ("smoke", "cpu"))
  config = default_config.get_default_config()
  config.dataset = "cifar10"
  config.train_split, config.eval_split = "train", "test"
  config.image_size = 32
  config.model = MODEL

  config.batch_size = 64
  config.eval_batch_size = 500
  config.num_epochs = 300.0
  config.optim.name = "adamw"
  config.optim.learning_rate = 0.01
  config.optim.weight_decay = 0.01
  config.optim.schedule = "one_cycle"

  config.augment.crop = "random_crop_pad"
  config.augment.flip = True
  config.augment.randaugment = "n2-m9"
  config.augment.random_erasing = 0.25
  config.augment.mixup_alpha = 0.8
  config.augment.cutmix_alpha = 1.0
  config.augment.mix_prob = 1.0
  config.augment.switch_prob = 0.5
  config.augment.label_smoothing = 0.1

  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 2000

  if "cpu" in variants:
    config.model_kwargs = CPU_MODEL_KWARGS
    config.num_epochs = CPU_EPOCHS
    config.batch_size = 64
    config.eval_every_steps = 0
    default_config.use_encrypted_domain_augmentation(config)
  if "smoke" in variants:
    config.model_kwargs = SMOKE_MODEL_KWARGS
    default_config.apply_smoke_variant(config)
  default_config.name_run(config, "convmixer_cifar10_plain", variants)
  return config
