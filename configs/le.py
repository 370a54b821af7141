r"""Baseline: learnable image encryption (LE, Tanaka 2018), block size 4.

LE images (4-bit planes, block-wise pixel shuffle and negative-positive
transformation with one key for all blocks) classified by Tanaka's
block-wise adaptation network in front of a CIFAR ResNet-18 (registered as
'LE-ResNet-18'; the original used PyramidNet + ShakeDrop, so report results
under this name). Training recipe of `pe_resnet18.py`.

    python -m etcjax.main --config=configs/le.py \
        --config.encryption.key_file=owner.key --workdir=/tmp/le

Variants: smoke (about a minute on a CPU: a narrow ResNet-10 classifier).
"""

from etcjax.training import default_config

_RESNET = default_config.load_sibling("pe_resnet18.py", __file__)


def get_config(arg=None):
  """Returns the config; `arg` is '' or 'smoke'."""
  variants = default_config.parse_variants(arg, ("smoke",))
  config = _RESNET.get_config(",".join(variants))
  config.model = "LE-ResNet-18"
  config.encryption.scheme = "le"
  config.encryption.block_size = 4
  default_config.name_run(config, "le", variants)
  return config
