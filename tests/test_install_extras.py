"""setup.py's accelerator extras install jax's plugins of the pinned jax."""

import ast
import importlib.metadata
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_lists():
  tree = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
  values = {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
      try:
        values[node.targets[0].id] = ast.literal_eval(node.value)
      except ValueError:
        pass
  return values["INSTALL_REQUIRES"], values["EXTRAS"]


def test_accelerator_extras_pin_the_installed_jax():
  install_requires, extras = _setup_lists()
  jax_pin = next(r for r in install_requires if r.startswith("jax=="))
  version = jax_pin.split("==")[1]
  assert extras["tpu"] == [f"jax[tpu]=={version}"]
  assert extras["cuda"] == [f"jax[cuda12]=={version}"]
  # The pinned version is the one installed here, whose metadata names the
  # plugins the extras pull (libtpu for TPU, the CUDA 12 plugin for GPU).
  assert importlib.metadata.version("jax") == version
  requires = importlib.metadata.requires("jax")
  assert any(r.startswith("libtpu") and 'extra == "tpu"' in r
             for r in requires)
  assert any(r.startswith(f"jax-cuda12-plugin[with-cuda]<={version}") and
             'extra == "cuda12"' in r for r in requires)
