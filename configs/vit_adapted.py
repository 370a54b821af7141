r"""ViT-B/16 from ImageNet-21k, key-adapted, fine-tuned on encrypted CIFAR-10.

For block-wise encryption whose in-block transform is common to all blocks
('block_common': block scrambling, in-block pixel shuffle,
negative-positive and colour shuffle, one choice for every block) with
block size 16 = the ViT patch size, the pretrained model is adapted with
the key before training (`config.adapt_pretrained`: rows of the
patch-embedding kernel permuted and sign-flipped, position embedding
permuted; see `etcjax.models.key_adaptation`). It then classifies encrypted
images exactly as the pretrained model classifies plain ones, so the
encrypted fine-tuning is the plain one in disguise: the recipe of
`vit_plain.py` (SGD momentum 0.9, lr 0.03, warm-up + cosine, batch 512,
10k steps, clipping at 1) on CIFAR-10 resized to 224x224 and encrypted on
the fly; plain-domain augmentation (the flip) is off, as in `vit_etc.py`.

    gsutil cp gs://vit_models/imagenet21k/ViT-B_16.npz ~/vit_models/imagenet21k/
    python -m etcjax.encrypt keygen --key_file=owner.key
    python -m etcjax.main --config=configs/vit_adapted.py \
        --config.encryption.key_file=owner.key --workdir=/tmp/vit_adapted

SECURITY: the fine-tuned model and the public ImageNet-21k weights together
reveal the key's block order and in-block transform (compare the kernels;
`python -m etcjax.evaluate adapted_key_recovery` does it). The export is marked so and
a warning is logged; keep it private if the key must stay secret.

Variants (`--config=...py:VARIANT`, comma-separated):
  smoke         ~1 minute on a CPU: ViT-Ti/16 at 64x64, 20 steps, adapting
                the fresh initialisation (or a checkpoint given with
                --config.pretrained_path) with a throwaway key.
  per_position  the paper's EtC (a different in-block transform per block)
                instead of 'block_common': the ViT gets one patch-embedding
                kernel per block position, initialised from the pretrained
                kernel adapted to each block's transform (with the position
                embedding permuted, EtC is absorbed exactly). Compare with
                `vit_etc.py`, the same images with a shared embedding.
"""

from etcjax.training import default_config

_PLAIN = default_config.load_sibling("vit_plain.py", __file__)


def get_config(arg=None):
  """Returns the config; `arg` is '' or a comma-separated variant list."""
  variants = default_config.parse_variants(arg, ("smoke", "per_position"))
  config = _PLAIN.get_config(",".join(variants & {"smoke"}))
  total_steps = config.total_steps  # vit_plain's, not vit_etc's 20k
  default_config.apply_etc(config, set(), block_size=16)
  config.encryption.scheme = "block_common"
  config.total_steps = total_steps
  config.adapt_pretrained = True
  if "per_position" in variants:
    config.encryption.scheme = "etc"
    config.model_kwargs = {"per_position_embedding": True}
  default_config.name_run(config, "vit_adapted", variants)
  return config
