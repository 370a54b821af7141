"""Shared test options and fixtures.

Real data is found through `--data-dir` or the ETCJAX_DATA_DIR environment
variable (a folder holding `tensorflow_datasets/` and `imagenette_224/`);
tests that need it are skipped, loudly, when neither is set.
"""

import os

import pytest


def pytest_addoption(parser):
  parser.addoption(
      "--data-dir", default=os.environ.get("ETCJAX_DATA_DIR"),
      help="folder with tensorflow_datasets/ and imagenette_224/ "
      "(default: $ETCJAX_DATA_DIR)")


@pytest.fixture(scope="session")
def data_dir(request):
  path = request.config.getoption("--data-dir")
  if not path:
    pytest.skip("real data not configured: pass --data-dir or set ETCJAX_DATA_DIR")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--data-dir / ETCJAX_DATA_DIR {path} does not exist")
  return path


@pytest.fixture(scope="session")
def tfds_data_dir(data_dir):
  return os.path.join(data_dir, "tensorflow_datasets")


@pytest.fixture(scope="session")
def imagenette_dir(data_dir):
  return os.path.join(data_dir, "imagenette_224")
