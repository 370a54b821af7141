"""The pipeline on the real CIFAR-10 (tfds) and Imagenette (image folder).

Skipped unless --data-dir / ETCJAX_DATA_DIR is set (see tests/conftest.py).
"""

import itertools

import numpy as np
import pytest

from etcjax.data import pipeline
from etcjax.data import sources


@pytest.fixture
def cifar_config(make_config, tfds_data_dir):
  def make(**overrides):
    # The test split serves as training data too: it loads in seconds.
    fields = dict(dataset="cifar10", data_dir=tfds_data_dir,
                  train_split="test", eval_split="test", image_size=32,
                  batch_size=64, eval_batch_size=1000,
                  augment__crop="random_crop_pad", augment__flip=True)
    return make_config(**dict(fields, **overrides))
  return make


def test_cifar10_info_from_metadata(cifar_config):
  info = pipeline.dataset_info(cifar_config(train_split="train"))
  assert (info.num_train, info.num_eval, info.num_classes) == (50000, 10000, 10)
  assert info.label_names[:2] == ["airplane", "automobile"]
  assert info.image_shape == (32, 32, 3)


def test_cifar10_eval_over_two_hosts_sees_the_test_set_once(cifar_config,
                                                           tfds_data_dir):
  source = sources.load_tfds_split("cifar10", "test", tfds_data_dir)
  config = cifar_config(eval_batch_size=768)  # 10000 = 13 * 768 + 16
  images, labels, positions = [], [], []
  for p in (0, 1):
    for b, batch in enumerate(pipeline.eval_iterator(config, p, 2)):
      mask = batch["mask"]
      images.append(batch["image"][mask])
      labels.append(batch["label"][mask])
      # Host p holds the p-th half of every global batch of 768.
      positions.append((768 * b + 384 * p + np.arange(384))[mask])
    assert b == 13
  order = np.argsort(np.concatenate(positions))
  np.testing.assert_array_equal(np.concatenate(positions)[order], np.arange(10000))
  np.testing.assert_array_equal(np.concatenate(images)[order], source.images)
  np.testing.assert_array_equal(np.concatenate(labels)[order], source.labels)


def test_cifar10_training_resumes_exactly(cifar_config):
  config = cifar_config(seed=11)
  fresh = list(itertools.islice(pipeline.train_iterator(config), 160, 163))
  resumed = list(itertools.islice(pipeline.train_iterator(config, 160), 3))
  for a, b in zip(fresh, resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert fresh[0]["image"].shape == (64, 32, 32, 3)


def test_cifar10_crop_none_at_another_size_is_refused(cifar_config):
  with pytest.raises(ValueError, match="crop='none' needs images of exactly 64x64"):
    next(pipeline.train_iterator(cifar_config(image_size=64, augment__crop="none")))


def test_imagenette_folder_at_224(make_config, imagenette_dir):
  config = make_config(dataset="folder", data_dir=imagenette_dir,
                       train_split="train", eval_split="val", image_size=224,
                       batch_size=8, eval_batch_size=16,
                       augment__crop="random_resized_crop", augment__flip=True,
                       augment__randaugment="n2-m9",
                       augment__random_erasing=0.25)
  info = pipeline.dataset_info(config)
  assert (info.num_train, info.num_eval, info.num_classes) == (2500, 3925, 10)
  batch = next(pipeline.train_iterator(config))
  assert batch["image"].shape == (8, 224, 224, 3)
  assert batch["image"].dtype == np.uint8
  assert batch["image"].std() > 10  # real pixels, not blank padding
  evals = next(pipeline.eval_iterator(config))
  assert evals["image"].shape == (16, 224, 224, 3) and evals["mask"].all()
