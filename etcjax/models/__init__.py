"""Flax models: ViT (vit_jax parameter names), ConvMixer, and key adaptation.

    module, variables = models.create('ViT-Ti_16', num_classes=10, image_size=32)
    logits = module.apply(variables, images, train=False)   # images in [-1, 1]
"""

from etcjax.models.checkpoint import (CheckpointMismatchError, load_pretrained,
                                      resample_posemb)
from etcjax.models.registry import (MODELS, build, create, init_variables,
                                    list_models)

__all__ = ["CheckpointMismatchError", "MODELS", "build", "create",
           "init_variables", "list_models", "load_pretrained",
           "resample_posemb"]
