r"""ConvMixer-256/8 (patch 1, kernel 9) from scratch on EtC CIFAR-10.

The paper's EtC result for ConvMixer (92.72% test accuracy, 0.965 of the
plain 96.07%): the recipe of `convmixer_cifar10_plain.py` on images
encrypted with EtC (block size 16: block scrambling, rotation/flip,
negative-positive transformation, colour shuffling). The cloud only ever
sees encrypted images, so plain-domain augmentation (crop, flip,
RandAugment, random erasing) is off; mixup and CutMix, which need no
plain images, stay on.

Train on a dataset encrypted on disk by the data owner (no key needed):

    python -m etcjax.encrypt keygen --key_file=owner.key
    python -m etcjax.encrypt encrypt --key_file=owner.key --scheme=etc \
        --block_size=16 --source=tfds:cifar10 --split=train,test \
        --out=cifar10_etc --format=png
    python -m etcjax.main --config=configs/convmixer_cifar10_etc.py \
        --config.dataset=encrypted --config.data_dir=cifar10_etc \
        --config.eval_split=test --workdir=/tmp/convmixer_cifar10_etc

or encrypt on the fly (research runs, the key is read by the trainer):

    python -m etcjax.main --config=configs/convmixer_cifar10_etc.py \
        --config.encryption.key_file=owner.key \
        --workdir=/tmp/convmixer_cifar10_etc

Variants (`--config=...py:VARIANT`, comma-separated):
  smoke       ~1 minute on a CPU; without a key file it encrypts with a
              throwaway in-memory key.
  cpu         full training set on 2 CPU cores in ~30 minutes; compare
              with `convmixer_cifar10_plain.py:cpu`.
  qf85, qf80  train and test on JPEG-compressed (4:2:0) encrypted images
              of that quality factor (the paper's QF rows).
"""

from etcjax.training import default_config

_PLAIN = default_config.load_sibling("convmixer_cifar10_plain.py", __file__)


def get_config(arg=None):
  """Returns the config; `arg` is '' or a comma-separated variant list."""
  variants = default_config.parse_variants(
      arg, ("smoke", "cpu", "qf85", "qf80"))
  config = _PLAIN.get_config(",".join(variants & {"smoke", "cpu"}))
  default_config.apply_etc(config, variants, block_size=16)
  default_config.name_run(config, "convmixer_cifar10_etc", variants)
  return config
