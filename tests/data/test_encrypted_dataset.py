"""Tests of the encrypted-dataset manifest and layout."""

import json
import os

import numpy as np
import pytest

from etcjax import encryption
from etcjax.data import encrypted_dataset


def _manifest(**overrides):
  fields = dict(
      scheme="etc", block_size=16, steps=None, image_shape=(32, 32, 3),
      encrypted_shape=(32, 32, 3), key_fingerprint="0123456789abcdef",
      codec="jpeg", jpeg_quality=85, chroma_subsampling="4:2:0",
      label_names=["cat", "dog"], source={"kind": "tfds", "name": "cifar10"},
      splits={"train": {"count": 3, "complete": True},
              "test": {"count": 2, "complete": False}})
  fields.update(overrides)
  return encrypted_dataset.make_manifest(**fields)


def test_write_then_read_round_trips(tmp_path):
  manifest = _manifest()
  path = encrypted_dataset.write_manifest(tmp_path, manifest)
  assert path == os.path.join(tmp_path, encrypted_dataset.MANIFEST_FILE)
  assert encrypted_dataset.read_manifest(tmp_path) == manifest
  with open(path) as f:
    on_disk = json.load(f)
  assert on_disk["format"] == "etcjax.encrypted_dataset.v2"
  assert on_disk["image_shape"] == [32, 32, 3]
  assert os.listdir(tmp_path) == [encrypted_dataset.MANIFEST_FILE]  # no temporaries


def test_write_is_atomic(tmp_path, monkeypatch):
  encrypted_dataset.write_manifest(tmp_path, _manifest())
  before = open(os.path.join(tmp_path, encrypted_dataset.MANIFEST_FILE)).read()

  def crash(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError, match="disk full"):
    encrypted_dataset.write_manifest(tmp_path, _manifest(scheme="le", block_size=4))
  # The old manifest is intact and no temporary file is left behind.
  assert open(os.path.join(tmp_path, encrypted_dataset.MANIFEST_FILE)).read() == before
  assert os.listdir(tmp_path) == [encrypted_dataset.MANIFEST_FILE]


def test_missing_manifest_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="not an etcjax encrypted dataset.*manifest.json"):
    encrypted_dataset.read_manifest(tmp_path)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("scheme"), "lacks the field 'scheme'"),
    (lambda m: m.update(format="something.else"), "expected 'etcjax.encrypted_dataset.v2'"),
    (lambda m: m.update(block_size="16"), "'block_size' must be int"),
    (lambda m: m.update(block_size=True), "'block_size' must be int"),
    (lambda m: m.update(scheme="rot13"), "unknown scheme 'rot13'"),
    (lambda m: m.update(image_shape=[32, 32]), r"image_shape must be \[H, W, C\]"),
    (lambda m: m.update(codec="webp"), "codec must be one of"),
    (lambda m: m.update(jpeg_quality=None), "needs a jpeg_quality"),
    (lambda m: m.update(codec="png"), "'png' is lossless"),
    (lambda m: m.update(chroma_subsampling="4:1:1"), "chroma_subsampling must be"),
    (lambda m: m.update(source={"kind": "s3"}), "source.kind"),
    (lambda m: m.update(splits={"train": {"count": 3}}), r"splits\['train'\]"),
    (lambda m: m.update(key="00" * 32), "secret material"),
    (lambda m: m.update(label_names=["cat", "../dog"]), "usable as folder names"),
    (lambda m: m.update(label_names=["cat", "cat"]), "duplicates"),
])
def test_invalid_manifests_are_rejected_naming_the_problem(tmp_path, edit, match):
  manifest = _manifest()
  edit(manifest)
  with open(os.path.join(tmp_path, encrypted_dataset.MANIFEST_FILE), "w") as f:
    json.dump(manifest, f)
  with pytest.raises(ValueError, match=match):
    encrypted_dataset.read_manifest(tmp_path)
  with pytest.raises(ValueError, match=match):
    encrypted_dataset.write_manifest(tmp_path / "other", manifest)


def test_invalid_json_is_rejected(tmp_path):
  with open(os.path.join(tmp_path, encrypted_dataset.MANIFEST_FILE), "w") as f:
    f.write('{"format": ')
  with pytest.raises(ValueError, match="not valid JSON"):
    encrypted_dataset.read_manifest(tmp_path)


def test_check_manifest():
  key = bytes(range(32))
  manifest = _manifest(key_fingerprint=encryption.fingerprint(key))
  encrypted_dataset.check_manifest(manifest, scheme="etc", block_size=16,
                              fingerprint=encryption.fingerprint(key),
                              split="train")
  encrypted_dataset.check_manifest(manifest, scheme="", fingerprint="")
  other = encryption.fingerprint(bytes(32))
  with pytest.raises(encryption.KeyMismatchError, match=f"wrong key.*{other}"):
    encrypted_dataset.check_manifest(manifest, fingerprint=other)
  with pytest.raises(ValueError, match="scheme 'etc', expected 'le'"):
    encrypted_dataset.check_manifest(manifest, scheme="le")
  with pytest.raises(ValueError, match="block size 16, expected 8"):
    encrypted_dataset.check_manifest(manifest, block_size=8)
  with pytest.raises(ValueError, match=r"no split 'val'.*\['test', 'train'\]"):
    encrypted_dataset.check_manifest(manifest, split="val")
  with pytest.raises(ValueError, match="split 'test' .* is incomplete"):
    encrypted_dataset.check_manifest(manifest, split="test")


def _touch(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  open(path, "wb").close()


def test_image_path_and_list_images(tmp_path):
  manifest = _manifest()
  assert encrypted_dataset.image_path(tmp_path, "train", "dog", 7, "jpeg") == \
      os.path.join(tmp_path, "train", "dog", "000007.jpg")
  assert encrypted_dataset.image_path("r", "s", "c", 1234567, "png").endswith(
      os.path.join("c", "1234567.png"))
  for label, index in (("dog", 0), ("cat", 2), ("dog", 1)):
    _touch(encrypted_dataset.image_path(tmp_path, "train", label, index, "jpeg"))
  _touch(os.path.join(tmp_path, "train", "cat", ".000009.jpg.x.tmp"))
  paths, labels, indices = encrypted_dataset.list_images(tmp_path, manifest, "train")
  np.testing.assert_array_equal(indices, [0, 1, 2])
  np.testing.assert_array_equal(labels, [1, 1, 0])
  assert labels.dtype == np.int32 and indices.dtype == np.int64
  assert [os.path.basename(p) for p in paths] == ["000000.jpg", "000001.jpg",
                                                  "000002.jpg"]
  _touch(encrypted_dataset.image_path(tmp_path, "train", "cat", 3, "jpeg"))
  with pytest.raises(ValueError, match="should hold 3 .jpg files .* 4 were found"):
    encrypted_dataset.list_images(tmp_path, manifest, "train")
  with pytest.raises(ValueError, match="incomplete"):
    encrypted_dataset.list_images(tmp_path, manifest, "test")


def test_file_hashes_are_validated(tmp_path):
  good = ["ab" * 32] * 3
  encrypted_dataset.write_manifest(tmp_path, _manifest(splits={
      "train": {"count": 3, "complete": True, "sha256": good}}))
  for entry, match in (
      ({"count": 3, "complete": True, "sha256": good[:2]}, "must list 3"),
      ({"count": 3, "complete": False, "sha256": ["xy"] * 3}, "must list 3"),
      ({"count": 3, "complete": True, "sha256": good[:2] + [None]},
       "marked complete but 1 of its files have no recorded hash")):
    with pytest.raises(encrypted_dataset.ManifestError, match=match):
      _manifest(splits={"train": entry})
  # A split written before hashes existed is valid but not verifiable.
  manifest = _manifest()
  with pytest.raises(encrypted_dataset.UnverifiableDatasetError,
                     match="no per-file hashes"):
    encrypted_dataset.split_hashes(tmp_path, manifest, "train", [0])
  assert encrypted_dataset.split_hashes(tmp_path, manifest, "train", [0],
                                        required=False) is None
