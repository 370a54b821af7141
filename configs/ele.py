r"""Baseline: extended learnable image encryption (ELE, Madono 2020), block 4.

ELE images (LE plus block scrambling, per-block keys) classified by
Madono's adaptation network (a separate sub-network per block position) in
front of a CIFAR ResNet-18 ('ELE-ResNet-18'; report under this name).
Training recipe of `pe_resnet18.py`.

    python -m etcjax.main --config=configs/ele.py \
        --config.encryption.key_file=owner.key --workdir=/tmp/ele

Variants: smoke (about a minute on a CPU: a narrow ResNet-10 classifier).
"""

from etcjax.training import default_config

_RESNET = default_config.load_sibling("pe_resnet18.py", __file__)


def get_config(arg=None):
  """Returns the config; `arg` is '' or 'smoke'."""
  variants = default_config.parse_variants(arg, ("smoke",))
  config = _RESNET.get_config(",".join(variants))
  config.model = "ELE-ResNet-18"
  config.encryption.scheme = "ele"
  config.encryption.block_size = 4
  default_config.name_run(config, "ele", variants)
  return config
