r"""ConvMixer-384/8 (patch 4) from scratch on EtC Imagenette at 224x224.

The recipe of `convmixer_imagenette_plain.py` on EtC images (block size
16), with mixup and CutMix only: the cloud sees encrypted images, so no
plain-domain augmentation. Images are resized to 224x224 by the data owner
before encryption.

    python -m etcjax.encrypt encrypt --key_file=owner.key --scheme=etc \
        --block_size=16 --source=folder:/path/to/imagenette2 \
        --split=train,val --resize=224,224 --out=imagenette_etc --format=png
    python -m etcjax.main --config=configs/convmixer_imagenette_etc.py \
        --config.dataset=encrypted --config.data_dir=imagenette_etc \
        --workdir=/tmp/convmixer_imagenette_etc

or encrypt on the fly: `--config.data_dir=/path/to/imagenette2
--config.encryption.key_file=owner.key`.

Variants (`--config=...py:VARIANT`, comma-separated):
  smoke       ~1 minute on a CPU.
  qf85, qf80  train and test on JPEG-compressed encrypted images.
"""

from etcjax.training import default_config

_PLAIN = default_config.load_sibling("convmixer_imagenette_plain.py", __file__)


def get_config(arg=None):
  """Returns the config; `arg` is '' or a comma-separated variant list."""
  variants = default_config.parse_variants(arg, ("smoke", "qf85", "qf80"))
  config = _PLAIN.get_config(",".join(variants & {"smoke"}))
  default_config.apply_etc(config, variants, block_size=16)
  default_config.name_run(config, "convmixer_imagenette_etc", variants)
  return config
