r"""Baseline: ResNet-18 from scratch on pixel-wise encrypted (PE) CIFAR-10.

Sirichotedumrong et al.'s pixel-based encryption (per-pixel
negative-positive transformation and colour shuffling with one key) with a
CIFAR ResNet-18. The baselines share this ResNet-18 recipe: SGD momentum
0.9, lr 0.1, weight decay 5e-4 (L2), cosine decay after a 1-epoch warm-up,
batch 128, 200 epochs. Augmentation is off because the cloud only sees
encrypted images.

    python -m etcjax.main --config=configs/pe_resnet18.py \
        --config.encryption.key_file=owner.key --workdir=/tmp/pe_resnet18

Variants (`--config=...py:VARIANT`):
  smoke  about a minute on a CPU (a narrow ResNet-10, 20 steps).
"""

from etcjax.training import default_config


def get_config(arg=None):
  """Returns the config; `arg` is '' or 'smoke'."""
  variants = default_config.parse_variants(arg, ("smoke",))
  config = default_config.get_default_config()
  config.dataset = "cifar10"
  config.train_split, config.eval_split = "train", "test"
  config.image_size = 32
  config.model = "ResNet-18"
  config.encryption.scheme = "pe"

  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = 200.0
  config.optim.name = "sgd"
  config.optim.momentum = 0.9
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "warmup_cosine"
  config.optim.warmup_steps = 391  # one epoch of 50,000 / 128

  config.augment.crop = "none"
  config.augment.flip = False
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 2000
  if "smoke" in variants:
    # A ResNet-10 of width 16: the ResNet-18 recipe at CPU speed.
    config.model_kwargs = {"width": 16, "stage_sizes": (1, 1, 1, 1)}
    default_config.apply_smoke_variant(config)
  default_config.name_run(config, "pe_resnet18", variants)
  return config
