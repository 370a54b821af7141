"""The input pipeline end to end on synthetic image folders and datasets
encrypted by `python -m etcjax.encrypt`; real data in test_real_data.py."""

import collections
import itertools
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from etcjax import encrypt as encrypt_cli
from etcjax import encryption
from etcjax.data import encrypted_dataset
from etcjax.data import host_encryption
from etcjax.data import pipeline
from etcjax.data import sources
from etcjax.encryption import jpeg

from .conftest import CLASSES, image_ids, write_folder

AUGMENT = dict(augment__crop="random_crop_pad", augment__flip=True,
               augment__randaugment="n2-m9", augment__random_erasing=0.5)


def _take(iterator, count):
  return list(itertools.islice(iterator, count))


def _same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture
def folder_config(make_config, folder_dataset):
  def make(**overrides):
    fields = dict(dataset="folder", data_dir=folder_dataset["root"],
                  train_split="train", eval_split="val", image_size=32,
                  batch_size=8, eval_batch_size=10)
    return make_config(**dict(fields, **overrides))
  return make


# ------------------------------------------------------------ order and hosts


def test_an_epoch_of_steps_covers_the_training_set(folder_config, folder_dataset):
  images, labels = folder_dataset["train"]
  batches = _take(pipeline.train_iterator(folder_config(seed=4)), 10)
  for epoch in (batches[:5], batches[5:]):  # 40 images, batch 8
    ids = np.concatenate([image_ids(b["image"]) for b in epoch])
    assert sorted(ids) == list(range(40))
    for batch in epoch:
      b_ids = image_ids(batch["image"])
      np.testing.assert_array_equal(batch["image"], images[b_ids])
      np.testing.assert_array_equal(batch["label"], labels[b_ids])
      assert batch["label"].dtype == np.int32
  assert not np.array_equal(batches[0]["image"], batches[5]["image"])


def test_seeded_runs_repeat_and_resume_exactly(folder_config):
  config = folder_config(seed=7, **AUGMENT)
  first = _take(pipeline.train_iterator(config), 7)
  _same_batches(_take(pipeline.train_iterator(config), 7), first)
  _same_batches(_take(pipeline.train_iterator(config, start_step=4), 3),
                first[4:])
  other = _take(pipeline.train_iterator(folder_config(seed=8, **AUGMENT)), 1)
  assert not np.array_equal(other[0]["image"], first[0]["image"])


def test_hosts_split_the_global_batch(folder_config):
  config = folder_config(seed=1, **AUGMENT)
  single = _take(pipeline.train_iterator(config, start_step=2), 3)
  hosts = [_take(pipeline.train_iterator(config, 2, p, 2), 3) for p in (0, 1)]
  for step in range(3):
    parts = [hosts[p][step] for p in (0, 1)]
    assert parts[0]["image"].shape == (4, 32, 32, 3)
    for key in ("image", "label"):
      # Same examples and the same augmentation, whatever the host count.
      np.testing.assert_array_equal(
          np.concatenate([p[key] for p in parts]), single[step][key])


@pytest.mark.parametrize("hosts", [1, 2])
def test_eval_sees_every_example_once(folder_config, folder_dataset, hosts):
  images, labels = folder_dataset["val"]
  config = folder_config(**AUGMENT)  # eval never augments
  seen = []
  for p in range(hosts):
    batches = list(pipeline.eval_iterator(config, p, hosts))
    assert len(batches) == 3  # ceil(23 / 10) on every host
    for batch in batches:
      assert batch["image"].shape == (10 // hosts, 32, 32, 3)
      mask = batch["mask"]
      ids = image_ids(batch["image"][mask], offset=100)
      np.testing.assert_array_equal(batch["image"][mask], images[ids])
      np.testing.assert_array_equal(batch["label"][mask], labels[ids])
      seen.extend(ids)
  assert sorted(seen) == list(range(23))


def test_augmented_images_are_uint8_of_the_model_size(folder_config):
  for crop in ("random_crop_pad", "random_resized_crop", "resize"):
    config = folder_config(image_size=16, augment__crop=crop,
                           augment__flip=True, augment__randaugment="n3-m10",
                           augment__random_erasing=1.0)
    batch = next(pipeline.train_iterator(config))
    assert batch["image"].shape == (8, 16, 16, 3)
    assert batch["image"].dtype == np.uint8
    assert pipeline.dataset_info(config).image_shape == (16, 16, 3)


def test_dataset_info_of_a_folder(folder_config):
  info = pipeline.dataset_info(folder_config())
  assert (info.num_train, info.num_eval, info.num_classes) == (40, 23, 3)
  assert info.label_names == list(CLASSES)
  assert info.image_shape == (32, 32, 3)
  assert not info.encrypted_on_disk and info.manifest is None


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides,match", [
    (dict(augment__crop="center"), "augment.crop must be one of"),
    (dict(augment__randaugment="m9-n2"), "augment.randaugment"),
    (dict(augment__random_erasing=1.5), "random_erasing is a probability"),
    (dict(encryption__jpeg_quality=85), "jpeg_quality is set but"),
    (dict(encryption__scheme="etc", encryption__jpeg_quality=101), r"\[1, 100\]"),
    (dict(encryption__scheme="rot13"), "rot13"),
    (dict(data_dir=None), "needs config.data_dir"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
])
def test_bad_configs_are_refused(folder_config, overrides, match):
  with pytest.raises(ValueError, match=match):
    pipeline.train_iterator(folder_config(**overrides))


def test_bad_sharding_and_steps_are_refused(folder_config):
  with pytest.raises(ValueError, match="multiple of the number of hosts"):
    pipeline.train_iterator(folder_config(), process_index=0, process_count=3)
  with pytest.raises(ValueError, match="eval_batch_size 10 must be"):
    pipeline.eval_iterator(folder_config(), process_index=0, process_count=3)
  with pytest.raises(ValueError, match="start_step"):
    pipeline.train_iterator(folder_config(), start_step=-1)


def test_crop_none_refuses_images_of_another_size(folder_config):
  with pytest.raises(ValueError, match="crop='none' needs images of exactly 16x16"):
    next(pipeline.train_iterator(folder_config(image_size=16)))


def test_missing_tfds_data_dir_names_the_folder(make_config, tmp_path):
  config = make_config(dataset="cifar10", data_dir=str(tmp_path / "nowhere"))
  for call in (pipeline.dataset_info, pipeline.train_iterator):
    with pytest.raises(FileNotFoundError, match="nowhere.*never downloads"):
      call(config)


def test_missing_folder_and_class_mismatch(make_config, tmp_path, folder_dataset):
  config = make_config(dataset="folder", data_dir=str(tmp_path / "nope"),
                       train_split="train", eval_split="val")
  with pytest.raises(FileNotFoundError, match="nope"):
    pipeline.dataset_info(config)
  images, _ = folder_dataset["val"]
  write_folder(tmp_path, "train", images[:4], [0, 1, 2, 0])
  write_folder(tmp_path, "val", images[:2], [0, 1])  # no class 'cat'
  config.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match="different class folders"):
    pipeline.dataset_info(config)
  with pytest.raises(ValueError, match="different class folders"):
    pipeline.eval_iterator(config)


def test_unreadable_file_is_named(make_config, tmp_path, folder_dataset):
  images, _ = folder_dataset["val"]
  paths = write_folder(tmp_path, "train", images[:16], np.arange(16) % 3)
  with open(paths[5], "wb") as f:
    f.write(b"not an image at all")
  config = make_config(dataset="folder", data_dir=str(tmp_path),
                       train_split="train", eval_split="train", batch_size=16,
                       eval_batch_size=16, image_size=32)
  with pytest.raises(ValueError, match=os.path.basename(paths[5])):
    next(pipeline.train_iterator(config))


# ---------------------------------------------------- encrypted datasets


@pytest.fixture(scope="module")
def owner_key(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("key") / "owner.key")
  assert encrypt_cli.main(["keygen", "--key_file", path]) == 0
  return path


@pytest.fixture(scope="module")
def encrypted_datasets(tmp_path_factory, folder_dataset, owner_key):
  """The folder dataset encrypted by the CLI as PNG and as JPEG (QF 85)."""
  out = {}
  for codec in ("png", "jpeg"):
    root = str(tmp_path_factory.mktemp(f"encrypted_{codec}"))
    argv = ["encrypt", "--key_file", owner_key, "--scheme", "etc",
            "--source", f"folder:{folder_dataset['root']}",
            "--split", "train,val", "--out", root, "--format", codec,
            "--workers", "1", "--no_progress", "--overwrite"]
    if codec == "jpeg":
      argv += ["--quality", "85"]
    assert encrypt_cli.main(argv) == 0
    out[codec] = root
  return out


@pytest.fixture
def encrypted_config(make_config, owner_key):
  def make(root, **overrides):
    fields = dict(
        dataset="encrypted", data_dir=root, train_split="train",
        eval_split="val", image_size=32, batch_size=8, eval_batch_size=10,
        encryption__scheme="etc",
        encryption__fingerprint=encryption.fingerprint(
            encryption.load_key(owner_key)))
    return make_config(**dict(fields, **overrides))
  return make


def test_encrypted_png_dataset_yields_the_encrypted_images(
    encrypted_datasets, encrypted_config, folder_dataset, owner_key):
  key = encryption.load_key(owner_key)
  config = encrypted_config(encrypted_datasets["png"])
  info = pipeline.dataset_info(config)
  assert info.encrypted_on_disk and info.manifest["scheme"] == "etc"
  assert (info.num_train, info.num_eval, info.image_shape) == (40, 23, (32, 32, 3))
  assert not pipeline.host_encrypts(config) and not pipeline.device_encrypts(config)
  images, labels = folder_dataset["val"]
  expected = encryption.encrypt(images, key, "etc")
  seen = []
  for p in (0, 1):
    for batch in pipeline.eval_iterator(config, p, 2):
      mask = batch["mask"]
      if not mask.any():  # host 1's share of the last batch is all padding
        continue
      plain = encryption.decrypt(batch["image"][mask], key, "etc")
      ids = image_ids(plain, offset=100)
      np.testing.assert_array_equal(batch["image"][mask], expected[ids])
      np.testing.assert_array_equal(batch["label"][mask], labels[ids])
      seen.extend(ids)
  assert sorted(seen) == list(range(23))
  train = _take(pipeline.train_iterator(config), 5)
  ids = np.concatenate([image_ids(encryption.decrypt(b["image"], key, "etc"))
                        for b in train])
  assert sorted(ids) == list(range(40))


@pytest.mark.parametrize("kind", ["folder", "encrypted"])
def test_split_slices_work_on_every_dataset_kind(
    kind, folder_config, encrypted_config, encrypted_datasets, folder_dataset,
    owner_key):
  """tfds-style slices ('train[:N]', as :smoke sets them) on files."""
  key = encryption.load_key(owner_key)
  make = (folder_config if kind == "folder" else
          lambda **kw: encrypted_config(encrypted_datasets["png"], **kw))
  config = make(train_split="train[:30]", eval_split="val[:50%]")
  info = pipeline.dataset_info(config)
  assert (info.num_train, info.num_eval) == (30, 11)

  def ids(batch):
    image = batch["image"]
    return image_ids(image if kind == "folder"
                     else encryption.decrypt(image, key, "etc"))
  seen = np.concatenate([ids(b) for b in _take(pipeline.train_iterator(config), 6)])
  assert len(set(seen)) == 30 and seen.max() < 40
  # The slice mixes the classes (files are listed class by class).
  _, labels = folder_dataset["train"]
  assert set(labels[sorted(set(seen))]) == set(range(len(CLASSES)))
  rest = np.concatenate([ids(b) for b in _take(pipeline.train_iterator(
      make(train_split="train[30:]", eval_split="val[:50%]")), 2)])
  assert not set(rest) & set(seen)  # 'train[:30]' and 'train[30:]' disjoint
  eval_ids = [ids(b)[b["mask"]] for b in pipeline.eval_iterator(config)]
  assert len(np.concatenate(eval_ids)) == 11
  with pytest.raises(ValueError, match="cannot read the split"):
    pipeline.dataset_info(make(train_split="train[:3"))
  with pytest.raises(ValueError, match="selects no example"):
    pipeline.dataset_info(make(train_split="train[40:]"))


def test_encrypted_jpeg_dataset_decodes_like_the_jpeg_module(
    encrypted_datasets, encrypted_config):
  root = encrypted_datasets["jpeg"]
  config = encrypted_config(root, encryption__jpeg_quality=85)
  paths, _, _ = encrypted_dataset.list_images(root, encrypted_dataset.read_manifest(root),
                                         "val")
  files = [open(p, "rb").read() for p in paths]
  expected = jpeg.decode(files)  # chroma replicated, not interpolated
  batches = list(pipeline.eval_iterator(config))
  got = np.concatenate([b["image"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("overrides,error,match", [
    (dict(encryption__fingerprint="0123456789abcdef"),
     encryption.KeyMismatchError, "fingerprint"),
    (dict(encryption__scheme="block_common"), ValueError, "uses scheme 'etc'"),
    (dict(encryption__block_size=32), ValueError, "block size 16"),
    (dict(augment__flip=True), ValueError, "augment.flip"),
    (dict(augment__crop="random_crop_pad"), ValueError, "plain-domain"),
    (dict(image_size=64), ValueError, "cannot be resized"),
    (dict(encryption__jpeg_quality=80), ValueError, "never re-encoded"),
    (dict(eval_split="test"), ValueError, "no split 'test'"),
])
def test_encrypted_dataset_that_differs_from_the_config_is_refused(
    encrypted_datasets, encrypted_config, overrides, error, match):
  config = encrypted_config(encrypted_datasets["png"], **overrides)
  with pytest.raises(error, match=match):
    pipeline.dataset_info(config)


def test_incomplete_encrypted_split_is_refused(encrypted_datasets,
                                               encrypted_config, tmp_path):
  root = encrypted_datasets["png"]
  manifest = encrypted_dataset.read_manifest(root)
  manifest["splits"]["train"]["complete"] = False
  encrypted_dataset.write_manifest(tmp_path, manifest)
  with pytest.raises(encrypted_dataset.IncompleteSplitError) as raised:
    pipeline.train_iterator(encrypted_config(str(tmp_path)))
  assert "incomplete" in str(raised.value) and str(tmp_path) in str(raised.value)
  with pytest.raises(FileNotFoundError, match="manifest.json"):
    pipeline.dataset_info(encrypted_config(str(tmp_path / "empty")))


def test_refusals_name_the_dataset_path(encrypted_datasets, encrypted_config,
                                        tmp_path):
  root = encrypted_datasets["png"]
  for overrides, error in (
      (dict(encryption__scheme="block_common"),
       encrypted_dataset.DatasetMismatchError),
      (dict(eval_split="test"), encrypted_dataset.IncompleteSplitError)):
    with pytest.raises(error) as raised:
      pipeline.dataset_info(encrypted_config(root, **overrides))
    assert root in str(raised.value) and "\n" not in str(raised.value)
  shutil.copytree(root, tmp_path / "copy")
  with open(tmp_path / "copy" / "manifest.json", "r+") as f:
    f.truncate(100)  # a manifest cut short
  with pytest.raises(encrypted_dataset.ManifestError,
                     match=f"{re.escape(str(tmp_path / 'copy'))}.*not valid JSON"):
    pipeline.dataset_info(encrypted_config(str(tmp_path / "copy")))


def _damage(path, offset_fraction=0.6):
  """Changes 4 bytes inside a file's (image) data, keeping its size."""
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    at = int(len(data) * offset_fraction)
    data[at:at + 4] = bytes(b ^ 0x5A for b in data[at:at + 4])
    f.seek(0)
    f.write(data)


def test_damaged_encrypted_file_stops_the_pipeline_naming_it(
    encrypted_datasets, encrypted_config, tmp_path):
  root = str(tmp_path / "copy")
  shutil.copytree(encrypted_datasets["jpeg"], root)
  paths, _, _ = encrypted_dataset.list_images(
      root, encrypted_dataset.read_manifest(root), "train")
  _damage(paths[7])
  config = encrypted_config(root, encryption__jpeg_quality=85)
  with pytest.raises(encrypted_dataset.DamagedFileError) as raised:
    _take(pipeline.train_iterator(config), 5)  # an epoch: every file
  message = str(raised.value)
  assert paths[7] in message and "damaged" in message and "\n" not in message
  # The other split is intact and still reads.
  assert list(pipeline.eval_iterator(config))


def _count_hashing(monkeypatch):
  """Counts `check_hashes`' SHA-256 calls, by the bytes hashed."""
  counts = collections.Counter()
  real = sources.sha256_digest

  def counted(data):
    counts[bytes(data)] += 1
    return real(data)

  monkeypatch.setattr(sources, "sha256_digest", counted)
  return counts


def test_each_file_is_hashed_once_per_source(
    encrypted_datasets, encrypted_config, monkeypatch):
  root = encrypted_datasets["jpeg"]
  paths, _, _ = encrypted_dataset.list_images(
      root, encrypted_dataset.read_manifest(root), "train")
  contents = set()
  for path in paths:
    with open(path, "rb") as f:
      contents.add(f.read())
  counts = _count_hashing(monkeypatch)
  config = encrypted_config(root, encryption__jpeg_quality=85)
  first = pipeline.train_iterator(config)
  _take(first, 4 * 5)  # 4 epochs of 5 steps
  assert set(counts) == contents and set(counts.values()) == {1}
  # A fresh Source (a new pipeline) verifies every file again, once.
  _take(pipeline.train_iterator(config), 2 * 5)
  assert set(counts) == contents and set(counts.values()) == {2}


def test_file_changed_after_its_verified_epoch_is_caught_later(
    encrypted_datasets, encrypted_config, tmp_path, monkeypatch):
  root = str(tmp_path / "copy")
  shutil.copytree(encrypted_datasets["jpeg"], root)
  paths, _, _ = encrypted_dataset.list_images(
      root, encrypted_dataset.read_manifest(root), "train")
  counts = _count_hashing(monkeypatch)
  batches = pipeline.train_iterator(
      encrypted_config(root, encryption__jpeg_quality=85))
  _take(batches, 2 * 5)  # every file verified by SHA-256
  assert sum(counts.values()) == len(paths)
  _damage(paths[7])
  with pytest.raises(encrypted_dataset.DamagedFileError) as raised:
    # tf.data may have read the next epoch's files already: read 4 more.
    _take(batches, 4 * 5)
  message = str(raised.value)
  assert paths[7] in message and "damaged" in message and "\n" not in message
  # Caught by the fingerprint of the verified bytes, not hashed again.
  assert sum(counts.values()) == len(paths)


def test_in_graph_check_compares_fingerprints_after_the_first_pass(
    encrypted_datasets, encrypted_config, monkeypatch):
  root = encrypted_datasets["png"]
  manifest = encrypted_dataset.read_manifest(root)
  source = sources.load_encrypted_split(root, "train", manifest)
  data = []
  for path in source.paths[:4]:
    with open(path, "rb") as f:
      data.append(f.read())
  checks = []
  real = sources.Source.check_hashes
  monkeypatch.setattr(sources.Source, "check_hashes",
                      lambda self, *a: checks.append(len(a[0])) or real(self, *a))
  check = pipeline._check_hashes(source)  # pylint: disable=protected-access

  def batch(files, index):
    return {"image": tf.zeros((len(files), 1), tf.uint8),
            "data": tf.constant(files), "index": tf.constant(index, tf.int64)}

  check(batch(data[:2], [0, 1]))
  assert checks == [2]
  check(batch(data[:3], [0, 1, 2]))  # only the file not verified yet
  assert checks == [2, 1]
  check(batch([data[2], data[0]], [2, 0]))
  assert checks == [2, 1]  # all in the graph: no Python call
  changed = data[1][:-1] + bytes([data[1][-1] ^ 1])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="differs from its recorded hash"):
    check(batch([data[0], changed], [0, 1]))
  with pytest.raises(tf.errors.InvalidArgumentError):
    check(batch([data[3]], [2]))  # another file's bytes
  assert sources.Source.verified_fingerprints(source)[0].sum() == 3


def test_dataset_without_file_hashes_is_refused_with_the_way_forward(
    encrypted_datasets, encrypted_config, tmp_path):
  root = str(tmp_path / "legacy")
  shutil.copytree(encrypted_datasets["png"], root)
  manifest = encrypted_dataset.read_manifest(root)
  manifest["format"] = "etcjax.encrypted_dataset.v1"
  for entry in manifest["splits"].values():
    del entry["sha256"]
  encrypted_dataset.write_manifest(root, manifest)
  with pytest.raises(encrypted_dataset.UnverifiableDatasetError,
                     match=f"{re.escape(root)}.*verify --out={re.escape(root)}"
                     " --add_hashes"):
    pipeline.dataset_info(encrypted_config(root))


# ---------------------------------------- on-the-fly encryption (host, JPEG)


def test_host_encryption_is_device_encryption_then_jpeg(folder_config, owner_key):
  key = encryption.load_key(owner_key)
  onfly = dict(encryption__scheme="etc", encryption__key_file=owner_key,
               encryption__fingerprint=encryption.fingerprint(key), **AUGMENT)
  plain_config = folder_config(seed=3, **onfly)
  jpeg_config = folder_config(seed=3, encryption__jpeg_quality=85, **onfly)
  assert pipeline.device_encrypts(plain_config)
  assert not pipeline.host_encrypts(plain_config)
  assert pipeline.host_encrypts(jpeg_config)
  assert not pipeline.device_encrypts(jpeg_config)
  plan = pipeline.encryption_plan(plain_config)
  plain = _take(pipeline.train_iterator(plain_config), 2)
  host = _take(pipeline.train_iterator(jpeg_config), 2)
  for p, h in zip(plain, host):
    encrypted = np.asarray(encryption.apply(plan, p["image"]))
    np.testing.assert_array_equal(h["image"], jpeg.jpeg_round_trip(encrypted, 85))
    np.testing.assert_array_equal(h["label"], p["label"])
  evals = list(pipeline.eval_iterator(jpeg_config))
  assert evals[0]["image"].shape == (10, 32, 32, 3)


def test_host_encryption_of_grayscale_etc_and_plans_in_memory(folder_config):
  key = encryption.generate_key()  # never written: passed as a plan
  config = folder_config(encryption__scheme="etc_gray", encryption__jpeg_quality=90)
  plan = pipeline.encryption_plan(config, key)
  assert pipeline.dataset_info(config).image_shape == (32, 96, 1)
  batch = next(pipeline.train_iterator(config, plan=plan))
  assert batch["image"].shape == (8, 32, 96, 1)
  plain = next(pipeline.train_iterator(folder_config()))
  expected = jpeg.jpeg_round_trip(np.asarray(encryption.apply(plan, plain["image"])), 90)
  np.testing.assert_array_equal(batch["image"], expected)
  with pytest.raises(ValueError, match="needs a key"):
    pipeline.train_iterator(config)
  other = encryption.make_plan(key, "etc", (32, 32, 3))
  with pytest.raises(ValueError, match="the plan is for scheme 'etc'"):
    pipeline.train_iterator(config, plan=other)


def test_wrong_key_is_refused_without_showing_it(folder_config, owner_key):
  config = folder_config(encryption__scheme="etc", encryption__key_file=owner_key,
                         encryption__fingerprint="0123456789abcdef",
                         encryption__jpeg_quality=85)
  key = encryption.load_key(owner_key)
  with pytest.raises(encryption.KeyMismatchError) as error:
    pipeline.train_iterator(config)
  assert key.hex() not in str(error.value)
  assert "0123456789abcdef" in str(error.value)


def test_jpeg_needs_a_jpeg_compliant_scheme(folder_config):
  config = folder_config(encryption__scheme="le", encryption__jpeg_quality=85)
  plan = pipeline.encryption_plan(config, encryption.generate_key())
  with pytest.raises(ValueError, match="not JPEG-compliant"):
    pipeline.train_iterator(config, plan=plan)
  with pytest.raises(ValueError, match="per image"):
    host_encryption.Encryptor(encryption.make_plan(
        encryption.generate_key(), "pe_per_image", (32, 32, 3),
        image_ids=np.arange(4)))
