r"""ViT-B/16 fine-tuned from ImageNet-21k on plain CIFAR-10 at 224x224.

The paper's plain-image baseline for ViT: SGD with momentum 0.9, lr 0.03,
linear warm-up then cosine decay, batch 512, 10k steps, gradients clipped
at global norm 1 (the vit_jax fine-tuning recipe). CIFAR-10 images are
resized to 224x224 (plain domain) and flipped at random.

The ImageNet-21k checkpoint is vit_jax's (`.npz`, '/'-joined parameter
names), from the public bucket:

    gsutil cp gs://vit_models/imagenet21k/ViT-B_16.npz ~/vit_models/imagenet21k/
    python -m etcjax.main --config=configs/vit_plain.py --workdir=/tmp/vit_plain

(point --config.pretrained_path elsewhere if you keep it elsewhere).

Variants (`--config=...py:VARIANT`):
  smoke  ~1 minute on a CPU: ViT-Ti/16 from scratch at 64x64, 20 steps.
"""

import os

from etcjax.training import default_config

PRETRAINED = os.path.join("~", "vit_models", "imagenet21k", "ViT-B_16.npz")


def get_config(arg=None):
  """Returns the config; `arg` is '' or a comma-separated variant list."""
  variants = default_config.parse_variants(arg, ("smoke",))
  config = default_config.get_default_config()
  config.dataset = "cifar10"
  config.train_split, config.eval_split = "train", "test"
  config.image_size = 224
  config.model = "ViT-B_16"
  config.pretrained_path = os.path.expanduser(PRETRAINED)

  config.batch_size = 512
  config.eval_batch_size = 512
  config.total_steps = 10_000
  config.optim.name = "sgd"
  config.optim.momentum = 0.9
  config.optim.learning_rate = 0.03
  config.optim.schedule = "warmup_cosine"
  config.optim.warmup_steps = 500
  config.optim.grad_clip_norm = 1.0

  config.augment.crop = "resize"
  config.augment.flip = True

  config.log_every_steps = 50
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000

  if "smoke" in variants:
    config.model = "ViT-Ti_16"
    config.pretrained_path = ""
    config.image_size = 64
    default_config.apply_smoke_variant(config)
  default_config.name_run(config, "vit_plain", variants)
  return config
