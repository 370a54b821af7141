r"""ViT-B/16 fine-tuned from ImageNet-21k on EtC CIFAR-10 at 224x224.

The paper's main experiment: the recipe of `vit_plain.py` (SGD momentum
0.9, lr 0.03, warm-up + cosine, batch 512, clipping at 1) for 20k steps on
CIFAR-10 images resized to 224x224 by the data owner and encrypted with
EtC at block size 16 = the ViT patch size. Plain-domain augmentation (the
random flip) is off: the cloud only sees encrypted images.

    gsutil cp gs://vit_models/imagenet21k/ViT-B_16.npz ~/vit_models/imagenet21k/
    python -m etcjax.encrypt keygen --key_file=owner.key
    python -m etcjax.encrypt encrypt --key_file=owner.key --scheme=etc \
        --block_size=16 --source=tfds:cifar10 --split=train,test \
        --resize=224,224 --out=cifar10_etc_224 --format=png
    python -m etcjax.main --config=configs/vit_etc.py \
        --config.dataset=encrypted --config.data_dir=cifar10_etc_224 \
        --workdir=/tmp/vit_etc

or encrypt on the fly with `--config.encryption.key_file=owner.key`.

Variants (`--config=...py:VARIANT`, comma-separated):
  smoke       ~1 minute on a CPU: ViT-Ti/16 from scratch at 64x64.
  qf85, qf80  train and test on JPEG-compressed (4:2:0) encrypted images.
"""

from etcjax.training import default_config

_PLAIN = default_config.load_sibling("vit_plain.py", __file__)


def get_config(arg=None):
  """Returns the config; `arg` is '' or a comma-separated variant list."""
  variants = default_config.parse_variants(arg, ("smoke", "qf85", "qf80"))
  config = _PLAIN.get_config(",".join(variants & {"smoke"}))
  default_config.apply_etc(config, variants, block_size=16)
  if "smoke" not in variants:
    config.total_steps = 20_000
  default_config.name_run(config, "vit_etc", variants)
  return config
