r"""Baseline: EtC images (block size 16) with a block-wise adaptation network.

The EtC images of the paper, classified not by an isotropic network but
the way LE does it: a block-wise adaptation network (one network shared
by all 16x16 blocks, on 4-bit planes) in front of a CIFAR ResNet-18. The
registry has no EtC-specific adaptation network, so this is the
'LE-ResNet-18' model with its block size set to 16 (`model_kwargs`;
results record both). EtC's rotation/flip, negative-positive and colour
choices differ from block to block, so a shared network cannot invert
them exactly; compare with the isotropic networks of `vit_etc.py` and
`convmixer_cifar10_etc.py`. Training recipe of `pe_resnet18.py`.

    python -m etcjax.main --config=configs/etc_adaptation.py \
        --config.encryption.key_file=owner.key --workdir=/tmp/etc_adaptation

Variants: smoke (about a minute on a CPU: a narrow ResNet-10 classifier).
"""

from etcjax.training import default_config

_RESNET = default_config.load_sibling("pe_resnet18.py", __file__)


def get_config(arg=None):
  """Returns the config; `arg` is '' or 'smoke'."""
  variants = default_config.parse_variants(arg, ("smoke",))
  config = _RESNET.get_config(",".join(variants))
  config.model = "LE-ResNet-18"
  config.model_kwargs = dict(config.model_kwargs.to_dict(), block_size=16)
  config.encryption.scheme = "etc"
  config.encryption.block_size = 16
  default_config.name_run(config, "etc_adaptation", variants)
  return config
