"""Flax models of etcjax: ViT (vit_jax parameter names), ConvMixer, the
paper's baselines (ResNet-18, LE/ELE adaptation networks) and key adaptation.

    module, variables = models.create('ViT-Ti_16', num_classes=10, image_size=32)
    logits = module.apply(variables, images, train=False)   # images in [-1, 1]
    variables = models.load_pretrained('ViT-B_16.npz', variables, 'ViT-B_16')

Images are float32 NHWC normalised to [-1, 1] (pixel / 127.5 - 1).
"""

from etcjax.models.checkpoint import (CheckpointMismatchError, load_pretrained,
                                      resample_posemb, save_npz)
from etcjax.models.depthwise_conv import depthwise_conv2d
from etcjax.models.registry import (MODELS, ModelParameterError,
                                    UnknownModelError, build, create,
                                    describe, init_variables, list_models)

__all__ = ["CheckpointMismatchError", "MODELS", "ModelParameterError",
           "UnknownModelError", "build", "create",
           "depthwise_conv2d", "describe", "init_variables", "list_models",
           "load_pretrained", "resample_posemb", "save_npz"]
