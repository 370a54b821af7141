"""Small synthetic image folders and configs for end-to-end training tests."""

import os

import numpy as np
from PIL import Image

from etcjax.training import default_config

CLASSES = ("bright", "dark", "left", "right")


def make_image_folder(root: str, per_class: int = 16, size: int = 32,
                      splits=("train", "test"), seed: int = 0) -> str:
  """Writes `root/<split>/<class>/<i>.png`: 4 easy classes of noisy images.

  Returns:
    `root`.
  """
  rng = np.random.default_rng(seed)
  for split in splits:
    for c, name in enumerate(CLASSES):
      folder = os.path.join(root, split, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        image = rng.integers(60, 140, (size, size, 3))
        if name == "bright":
          image += 100
        elif name == "dark":
          image -= 60
        elif name == "left":
          image[:, : size // 2] += 100
        else:
          image[:, size // 2:] += 100
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"{i:03d}.png"))
  return root


def tiny_config(data_dir: str, **encryption):
  """A ~10 s training config on `make_image_folder` data.

  Args:
    data_dir: the image folder.
    **encryption: fields of `config.encryption` to set.

  Returns:
    A ConfigDict: a ConvMixer-16/1 (patch 4), 12 steps of 16 images,
    AdamW + one-cycle, mixup/CutMix on, checkpoints every 4 steps.
  """
  config = default_config.get_default_config()
  config.name = "tiny"
  config.dataset = "folder"
  config.data_dir = data_dir
  config.train_split, config.eval_split = "train", "test"
  config.image_size = 32
  config.model = "ConvMixer-256/8"
  config.model_kwargs = {"dim": 16, "depth": 1, "patch_size": 4,
                         "kernel_size": 3}
  config.batch_size = 16
  config.eval_batch_size = 32
  config.total_steps = 12
  config.optim.update(name="adamw", learning_rate=0.01, weight_decay=0.01,
                      schedule="one_cycle")
  config.augment.update(crop="none", flip=False, mixup_alpha=0.4,
                        cutmix_alpha=0.4, label_smoothing=0.1)
  config.log_every_steps = 4
  config.checkpoint_every_steps = 4
  config.keep_checkpoints = 2
  config.encryption.update(encryption)
  return config
