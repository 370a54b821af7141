"""etcjax: privacy-preserving image classification with EtC images in JAX/Flax."""

__version__ = "0.1.0"
