r"""ConvMixer-384/8 (patch 4) from scratch on plain Imagenette at 224x224.

The paper's second dataset: the ConvMixer recipe of
`convmixer_cifar10_plain.py` (AdamW lr 0.01, weight decay 0.01, one-cycle,
batch 64, 300 epochs, RandAugment, mixup, CutMix, random erasing) with
random-resized crops and flips, on an image folder
`DATA/{train,val}/<class>/*.JPEG`:

    python -m etcjax.main --config=configs/convmixer_imagenette_plain.py \
        --config.data_dir=/path/to/imagenette2 \
        --workdir=/tmp/convmixer_imagenette_plain

Variants (`--config=...py:VARIANT`):
  smoke  ~1 minute on a CPU (a ConvMixer-32/2 at 64x64, 20 steps).
"""

from etcjax.training import default_config

_CIFAR10 = default_config.load_sibling("convmixer_cifar10_plain.py", __file__)


def get_config(arg=None):
  """Returns the config; `arg` is '' or a comma-separated variant list."""
  variants = default_config.parse_variants(arg, ("smoke",))
  # The CIFAR-10 ConvMixer recipe (optimizer, schedule, batch, epochs,
  # RandAugment, mixup, CutMix, random erasing), on 224x224 images.
  config = _CIFAR10.get_config("")
  config.dataset = "folder"
  config.data_dir = None  # the image folder's root: pass --config.data_dir
  config.train_split, config.eval_split = "train", "val"
  config.image_size = 224
  config.model = "ConvMixer-384/8"
  config.augment.crop = "random_resized_crop"
  if "smoke" in variants:
    config.model_kwargs = {"dim": 32, "depth": 2}  # patch 4, kernel 9
    config.image_size = 64  # keeps the 500 evaluated val images cheap
    default_config.apply_smoke_variant(config)
  default_config.name_run(config, "convmixer_imagenette_plain", variants)
  return config
