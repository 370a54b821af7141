"""Tests of the client CLI `python -m etcjax.encrypt` and its tfds source."""

import glob
import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from etcjax import encrypt as cli
from etcjax import encryption
from etcjax.data import encrypted_dataset
from etcjax.data import encrypted_writer
from etcjax.data import image_folder
from etcjax.data import tfds_source
from etcjax.encryption import jpeg

CLASSES = ("n01440764", "n02102040")


def run(capsys, *argv):
  """Runs the CLI in-process; returns (status, stdout, stderr)."""
  status = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return status, out, err


@pytest.fixture
def key_file(tmp_path, capsys):
  path = tmp_path / "owner.key"
  status, out, _ = run(capsys, "keygen", f"--key_file={path}")
  assert status == 0, out
  return str(path)


@pytest.fixture
def small_folder(tmp_path, imagenette_dir):
  """ROOT/{train,val}/<2 classes>/<3 images>, copied from Imagenette."""
  root = tmp_path / "plain"
  for split in ("train", "val"):
    for name in CLASSES:
      files = sorted(os.listdir(os.path.join(imagenette_dir, split, name)))[:3]
      os.makedirs(root / split / name)
      for file in files:
        shutil.copy(os.path.join(imagenette_dir, split, name, file),
                    root / split / name / file)
  return str(root)


def _files(root):
  return sorted(p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                if os.path.isfile(p))


def assert_key_absent(key_path, roots=(), texts=()):
  """The key (raw, hex or upper-case hex) is in no file and no output."""
  key = encryption.load_key(key_path)
  needles = (key, key.hex().encode(), key.hex().upper().encode())
  for root in roots:
    for path in _files(root):
      with open(path, "rb") as f:
        data = f.read()
      assert not any(n in data for n in needles), path
  for text in texts:
    assert not any(n.decode("latin-1") in text for n in needles[1:])


def _plain_split(root, split):
  folder = image_folder.scan(os.path.join(root, split))
  return np.stack([image_folder.read_image(p) for p in folder.paths]), folder.labels


def _decrypted_split(root, split):
  """A decrypted folder's images and labels in source-index order."""
  folder = image_folder.scan(os.path.join(root, split))
  order = np.argsort([int(os.path.basename(p)[:-4]) for p in folder.paths])
  images = np.stack([image_folder.read_image(folder.paths[i]) for i in order])
  return images, folder.labels[order]


def _read_dataset(root, split, channels):
  manifest = encrypted_dataset.read_manifest(root)
  paths, labels, indices = encrypted_dataset.list_images(root, manifest, split)
  images = np.stack([jpeg.decode_image(open(p, "rb").read(), channels)
                     for p in paths])
  return manifest, images, labels, indices


# --------------------------------------------------------------------------
# keygen


def test_keygen_writes_a_private_key_and_prints_only_the_fingerprint(
    tmp_path, capsys):
  path = tmp_path / "k"
  status, out, err = run(capsys, "keygen", f"--key_file={path}")
  assert status == 0
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
  key = encryption.load_key(path)
  assert encryption.fingerprint(key) in out
  assert_key_absent(path, texts=(out, err))

  status, out, err = run(capsys, "keygen", f"--key_file={path}")
  assert status == 1 and "already exists" in err and "--overwrite" in err
  assert encryption.load_key(path) == key

  status, out, err = run(capsys, "keygen", f"--key_file={path}", "--overwrite")
  assert status == 0
  new_key = encryption.load_key(path)
  assert new_key != key and encryption.fingerprint(new_key) in out


# --------------------------------------------------------------------------
# encrypt / decrypt round trips


def test_png_folder_round_trip_is_exact(tmp_path, capsys, key_file, small_folder):
  out_dir, dec_dir = tmp_path / "enc", tmp_path / "dec"
  status, out, err = run(
      capsys, "encrypt", f"--key_file={key_file}", f"--source=folder:{small_folder}",
      "--split=train,val", f"--out={out_dir}", "--format=png", "--no_progress")
  assert status == 0, err
  key = encryption.load_key(key_file)
  manifest = encrypted_dataset.read_manifest(out_dir)
  assert manifest["scheme"] == "etc" and manifest["block_size"] == 16
  assert manifest["codec"] == "png" and manifest["jpeg_quality"] is None
  assert manifest["chroma_subsampling"] is None
  assert manifest["image_shape"] == manifest["encrypted_shape"] == [224, 224, 3]
  assert manifest["key_fingerprint"] == encryption.fingerprint(key)
  assert manifest["label_names"] == list(CLASSES)
  assert manifest["source"] == {"kind": "folder", "name": "plain"}
  assert {s: (e["count"], e["complete"]) for s, e in manifest["splits"].items()} \
      == {"train": (6, True), "val": (6, True)}
  assert len(_files(out_dir)) == 13

  for split in ("train", "val"):
    plain, labels = _plain_split(small_folder, split)
    _, enc, enc_labels, indices = _read_dataset(out_dir, split, 3)
    np.testing.assert_array_equal(indices, np.arange(6))
    np.testing.assert_array_equal(enc_labels, labels)
    np.testing.assert_array_equal(enc, encryption.encrypt(plain, key))
    assert np.mean(enc != plain) > 0.9

  status, out, err = run(capsys, "decrypt", f"--key_file={key_file}",
                         f"--in={out_dir}", f"--out={dec_dir}", "--no_progress")
  assert status == 0, err
  for split in ("train", "val"):
    plain, labels = _plain_split(small_folder, split)
    decrypted, dec_labels = _decrypted_split(dec_dir, split)
    np.testing.assert_array_equal(decrypted, plain)
    np.testing.assert_array_equal(dec_labels, labels)
  assert not [p for p in os.listdir(dec_dir) if p.startswith(".")]
  assert_key_absent(key_file, roots=(out_dir, dec_dir), texts=(out, err))


def test_jpeg_tfds_round_trip_within_jpeg_error(tmp_path, capsys, key_file,
                                                tfds_data_dir):
  out_dir, dec_dir = tmp_path / "enc", tmp_path / "dec"
  status, out, err = run(
      capsys, "encrypt", f"--key_file={key_file}", "--source=tfds:cifar10",
      "--split=test", f"--data_dir={tfds_data_dir}", "--limit=64",
      f"--out={out_dir}", "--format=jpeg", "--quality=85",
      "--subsampling=4:2:0")
  assert status == 0, err
  key = encryption.load_key(key_file)
  plain, labels, names = tfds_source.load_tfds("cifar10", "test[:64]",
                                               tfds_data_dir)
  manifest, enc, enc_labels, indices = _read_dataset(out_dir, "test", 3)
  assert manifest["codec"] == "jpeg" and manifest["jpeg_quality"] == 85
  assert manifest["chroma_subsampling"] == "4:2:0"
  assert manifest["label_names"] == names
  assert manifest["source"] == {"kind": "tfds", "name": "cifar10",
                                "version": "3.0.2"}
  hashes = manifest["splits"]["test"].pop("sha256")
  assert manifest["splits"] == {"test": {"count": 64, "complete": True}}
  # The recorded hashes are those of the files' bytes, by source index.
  paths, _, _ = encrypted_dataset.list_images(out_dir, manifest, "test")
  assert hashes == [encrypted_dataset.hash_file(p) for p in paths]
  np.testing.assert_array_equal(indices, np.arange(64))
  np.testing.assert_array_equal(enc_labels, labels)
  # The files are exactly the JPEG of the encrypted images.
  np.testing.assert_array_equal(
      enc, jpeg.jpeg_round_trip(encryption.encrypt(plain, key), 85, "4:2:0"))

  status, out2, err2 = run(capsys, "decrypt", f"--key_file={key_file}",
                           f"--in={out_dir}", f"--out={dec_dir}")
  assert status == 0, err2
  decrypted, dec_labels = _decrypted_split(dec_dir, "test")
  np.testing.assert_array_equal(dec_labels, labels)
  np.testing.assert_array_equal(decrypted, encryption.decrypt(enc, key))
  jpeg_only = jpeg.jpeg_round_trip(plain, 85, "4:2:0")
  mse = lambda a: np.mean((a.astype(float) - plain) ** 2)
  assert mse(decrypted) < 1.2 * mse(jpeg_only)  # within JPEG's own error
  assert_key_absent(key_file, roots=(out_dir, dec_dir),
                    texts=(out, err, out2, err2))


def test_grayscale_etc_writes_grayscale_jpegs(tmp_path, capsys, key_file,
                                              small_folder):
  out_dir, dec_dir = tmp_path / "enc", tmp_path / "dec"
  status, _, err = run(
      capsys, "encrypt", f"--key_file={key_file}", "--scheme=etc_gray",
      "--block_size=8", f"--source=folder:{small_folder}", "--split=val",
      f"--out={out_dir}", "--quality=90", "--no_progress")
  assert status == 0, err
  manifest = encrypted_dataset.read_manifest(out_dir)
  assert manifest["encrypted_shape"] == [224, 672, 1]
  assert manifest["chroma_subsampling"] is None  # no chroma in gray JPEGs
  paths, _, _ = encrypted_dataset.list_images(out_dir, manifest, "val")
  with Image.open(paths[0]) as im:
    assert im.format == "JPEG" and im.mode == "L" and im.size == (672, 224)
  status, _, err = run(capsys, "decrypt", f"--key_file={key_file}",
                       f"--in={out_dir}", f"--out={dec_dir}", "--no_progress")
  assert status == 0, err
  plain, _ = _plain_split(small_folder, "val")
  decrypted, _ = _decrypted_split(dec_dir, "val")
  psnr = 10 * np.log10(255**2 / np.mean((decrypted.astype(float) - plain)**2))
  assert psnr > 30


def test_per_image_keys_differ_across_splits(tmp_path, capsys, key_file,
                                             small_folder):
  out_dir, dec_dir = tmp_path / "enc", tmp_path / "dec"
  status, _, err = run(
      capsys, "encrypt", f"--key_file={key_file}", "--scheme=pe_per_image",
      f"--source=folder:{small_folder}", "--split=train,val",
      f"--out={out_dir}", "--format=png", "--no_progress", "--workers=1")
  assert status == 0, err
  key = encryption.load_key(key_file)
  for split in ("train", "val"):
    plain, _ = _plain_split(small_folder, split)
    _, enc, _, indices = _read_dataset(out_dir, split, 3)
    ids = encrypted_dataset.image_key_ids(split, indices)
    np.testing.assert_array_equal(
        enc, encryption.encrypt(plain, key, "pe_per_image", image_ids=ids))
  # Image 0 of 'train' and image 0 of 'val' have different keys: the same
  # pixels encrypt differently under the two ids.
  train0, val0 = (encrypted_dataset.image_key_ids(s, [0]) for s in ("train", "val"))
  assert train0[0] != val0[0]
  image = _plain_split(small_folder, "train")[0][:1]
  assert not np.array_equal(
      encryption.encrypt(image, key, "pe_per_image", image_ids=train0),
      encryption.encrypt(image, key, "pe_per_image", image_ids=val0))
  status, _, err = run(capsys, "decrypt", f"--key_file={key_file}",
                       f"--in={out_dir}", f"--out={dec_dir}", "--no_progress")
  assert status == 0, err
  for split in ("train", "val"):
    np.testing.assert_array_equal(_decrypted_split(dec_dir, split)[0],
                                  _plain_split(small_folder, split)[0])


def test_image_key_ids_reject_out_of_range_indices():
  with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
    encrypted_dataset.image_key_ids("train", [-1])


# --------------------------------------------------------------------------
# Resumability and refusing to overwrite


def test_rerun_rewrites_only_missing_files(tmp_path, capsys, key_file,
                                           small_folder):
  out_dir = tmp_path / "enc"
  argv = ("encrypt", f"--key_file={key_file}", f"--source=folder:{small_folder}",
          "--split=train", f"--out={out_dir}", "--no_progress")
  assert run(capsys, *argv)[0] == 0
  files = [p for p in _files(out_dir) if p.endswith(".jpg")]
  before = {p: os.stat(p).st_mtime_ns for p in files}
  victim = files[3]
  os.remove(victim)
  # An interrupted write leaves only a temporary file; it must be ignored.
  open(os.path.join(os.path.dirname(victim), ".000004.jpg.abc.tmp"), "wb").close()
  # Simulate an interrupted run: split marked incomplete.
  manifest = encrypted_dataset.read_manifest(out_dir)
  manifest["splits"]["train"]["complete"] = False
  encrypted_dataset.write_manifest(out_dir, manifest)

  status, out, err = run(capsys, *argv)
  assert status == 0, err
  assert "train: 1 written, 5 already done, 0 failed" in out
  after = {p: os.stat(p).st_mtime_ns for p in files}
  assert [p for p in files if after[p] != before[p]] == [victim]
  assert encrypted_dataset.read_manifest(out_dir)["splits"]["train"]["complete"]
  assert len(_files(out_dir)) == 7  # the stale temporary file is gone


def test_removing_a_bad_source_image_as_advised_then_re_running_completes(
    tmp_path, capsys, key_file, small_folder):
  out_dir = tmp_path / "enc"
  bad = sorted(glob.glob(os.path.join(small_folder, "val", CLASSES[0], "*")))[1]
  with open(bad, "wb") as f:
    f.write(b"not an image")
  argv = ("encrypt", f"--key={key_file}", f"--source=folder:{small_folder}",
          "--split=val", f"--out={out_dir}", "--no_progress")
  status, _, err = run(capsys, *argv)
  assert status == 1 and bad in err and "fix or remove" in err
  os.remove(bad)  # as advised; the later images' indices move down by one
  status, out, err = run(capsys, *argv)
  assert status == 0, err
  assert "val: 5 written, 0 already done, 0 failed" in out
  assert "started over" in err
  manifest, enc, _, _ = _read_dataset(out_dir, "val", 3)
  assert manifest["splits"]["val"]["complete"] and len(enc) == 5
  assert run(capsys, "verify", f"--out={out_dir}")[0] == 0
  # A complete split is still never replaced without --overwrite.
  os.remove(sorted(glob.glob(os.path.join(small_folder, "val", CLASSES[1], "*")))[0])
  status, _, err = run(capsys, *argv)
  assert status == 1 and "another list of source files" in err


def test_key_that_is_a_folder_is_named_as_such(tmp_path, capsys, small_folder):
  status, _, err = run(capsys, "encrypt", f"--key={tmp_path}",
                       f"--source=folder:{small_folder}", "--split=val",
                       f"--out={tmp_path / 'enc'}", "--no_progress")
  assert status == 1 and f"key file {tmp_path} is a folder" in err
  assert not os.path.exists(tmp_path / "enc")


def _damage(path):
  """Changes 4 bytes inside a file's image data, keeping its size."""
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    at = len(data) * 3 // 5
    data[at:at + 4] = bytes(b ^ 0x5A for b in data[at:at + 4])
    f.seek(0)
    f.write(data)


@pytest.mark.parametrize("harm", ["truncate", "damage", "unhashed"])
def test_resume_redoes_truncated_damaged_and_unhashed_files(
    tmp_path, capsys, key_file, small_folder, harm):
  out_dir = tmp_path / "enc"
  argv = ("encrypt", f"--key={key_file}", f"--source=folder:{small_folder}",
          "--split=train", f"--out={out_dir}", "--no_progress")
  assert run(capsys, *argv)[0] == 0
  files = [p for p in _files(out_dir) if p.endswith(".jpg")]
  good = {p: open(p, "rb").read() for p in files}
  victim = files[4]
  if harm == "truncate":
    with open(victim, "r+b") as f:
      f.truncate(475)
  elif harm == "damage":
    _damage(victim)
  else:  # a crash between writing the file and recording its hash
    manifest = encrypted_dataset.read_manifest(out_dir)
    manifest["splits"]["train"]["complete"] = False
    manifest["splits"]["train"]["sha256"][4] = None
    encrypted_dataset.write_manifest(out_dir, manifest)
    with open(victim, "r+b") as f:
      f.truncate(475)
  status, out, err = run(capsys, *argv)
  assert status == 0, err
  assert "train: 1 written, 5 already done, 0 failed" in out
  assert "redone" in err and (victim in err or harm == "unhashed")
  assert {p: open(p, "rb").read() for p in files} == good
  assert run(capsys, "verify", f"--out={out_dir}")[0] == 0


def test_verify_reports_damaged_missing_and_unhashed_files(
    tmp_path, capsys, key_file, small_folder):
  out_dir = tmp_path / "enc"
  assert run(capsys, "encrypt", f"--key={key_file}",
             f"--source=folder:{small_folder}", "--split=train,val",
             f"--out={out_dir}", "--no_progress")[0] == 0
  status, out, _ = run(capsys, "verify", f"--out={out_dir}")
  assert status == 0
  assert "train: 6 of 6 files checked (complete), 0 problems" in out
  files = sorted(p for p in _files(out_dir / "val") if p.endswith(".jpg"))
  _damage(files[0])
  os.remove(files[5])
  status, out, err = run(capsys, "verify", f"--out={out_dir}")
  assert status == 1
  assert "val: 5 of 6 files checked (complete), 2 problems" in out
  assert f"{files[0]} is damaged" in err and "is missing" in err
  status, out, _ = run(capsys, "verify", f"--out={out_dir}", "--split=train")
  assert status == 0 and "val" not in out


def test_dataset_without_hashes_is_upgraded_by_verify_or_re_encrypting(
    tmp_path, capsys, key_file, small_folder):
  out_dir = tmp_path / "enc"
  argv = ("encrypt", f"--key={key_file}", f"--source=folder:{small_folder}",
          "--split=val", f"--out={out_dir}", "--no_progress")
  assert run(capsys, *argv)[0] == 0
  current = encrypted_dataset.read_manifest(out_dir)

  def make_legacy():
    manifest = encrypted_dataset.read_manifest(out_dir)
    manifest["format"] = "etcjax.encrypted_dataset.v1"
    del manifest["splits"]["val"]["sha256"]
    encrypted_dataset.write_manifest(out_dir, manifest)

  make_legacy()
  status, out, err = run(capsys, "verify", f"--out={out_dir}")
  assert status == 1 and "no recorded hashes" in out and "--add_hashes" in out
  status, out, err = run(capsys, "verify", f"--out={out_dir}", "--add_hashes")
  assert status == 0, err
  assert encrypted_dataset.read_manifest(out_dir) == current
  # Or re-running encrypt: every unhashed file is re-written and hashed.
  make_legacy()
  status, out, err = run(capsys, *argv)
  assert status == 0 and "val: 6 written, 0 already done" in out
  assert encrypted_dataset.read_manifest(out_dir) == current


def test_refuses_to_mix_keys_or_settings_without_overwrite(
    tmp_path, capsys, key_file, small_folder):
  out_dir = tmp_path / "enc"
  base = (f"--source=folder:{small_folder}", "--split=val", f"--out={out_dir}",
          "--no_progress")
  assert run(capsys, "encrypt", f"--key_file={key_file}", *base)[0] == 0
  first = {p: open(p, "rb").read() for p in _files(out_dir)}

  other_key = tmp_path / "other.key"
  assert run(capsys, "keygen", f"--key_file={other_key}")[0] == 0
  status, _, err = run(capsys, "encrypt", f"--key_file={other_key}", *base)
  assert status == 1 and "another key" in err and "--overwrite" in err
  status, _, err = run(capsys, "encrypt", f"--key_file={key_file}", *base,
                       "--format=png")
  assert status == 1 and "codec 'jpeg'" in err and "--overwrite" in err
  status, _, err = run(capsys, "encrypt", f"--key_file={key_file}", *base,
                       "--overwrite", "--scheme=block_common")
  assert status == 0, err
  assert {p: open(p, "rb").read() for p in _files(out_dir)} != first
  # A rerun with the original settings: identical files again, after --overwrite.
  assert run(capsys, "encrypt", f"--key_file={key_file}", *base, "--overwrite")[0] == 0
  assert {p: open(p, "rb").read() for p in _files(out_dir)} == first

  # A folder that is not an encrypted dataset is never written into.
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  status, _, err = run(capsys, "encrypt", f"--key_file={key_file}",
                       f"--source=folder:{small_folder}", "--split=val",
                       f"--out={foreign}", "--overwrite")
  assert status == 1 and "non-empty folder" in err
  assert os.listdir(foreign) == ["notes.txt"]

  # Decrypting into an existing split folder needs --overwrite too.
  dec_dir = tmp_path / "dec"
  argv = ("decrypt", f"--key_file={key_file}", f"--in={out_dir}", f"--out={dec_dir}")
  assert run(capsys, *argv)[0] == 0
  status, _, err = run(capsys, *argv)
  assert status == 1 and "already exists" in err
  assert run(capsys, *argv, "--overwrite")[0] == 0


def test_changed_source_folder_is_refused_on_resume(tmp_path, capsys, key_file,
                                                    small_folder):
  out_dir = tmp_path / "enc"
  argv = ("encrypt", f"--key_file={key_file}", f"--source=folder:{small_folder}",
          "--split=train", f"--out={out_dir}", "--no_progress", "--format=png")
  assert run(capsys, *argv)[0] == 0
  first = sorted(glob.glob(os.path.join(small_folder, "train", CLASSES[0], "*")))[0]
  os.remove(first)  # every later index now names another image
  status, _, err = run(capsys, *argv)
  assert status == 1 and "another list of source files" in err
  assert run(capsys, *argv, "--overwrite")[0] == 0
  manifest, enc, _, _ = _read_dataset(out_dir, "train", 3)
  assert manifest["splits"]["train"]["count"] == 5 and len(enc) == 5
  plain, _ = _plain_split(small_folder, "train")
  np.testing.assert_array_equal(
      enc, encryption.encrypt(plain, encryption.load_key(key_file)))


def test_wrong_key_is_refused_on_decrypt(tmp_path, capsys, key_file,
                                         small_folder):
  out_dir, dec_dir = tmp_path / "enc", tmp_path / "dec"
  assert run(capsys, "encrypt", f"--key_file={key_file}",
             f"--source=folder:{small_folder}", "--split=val",
             f"--out={out_dir}", "--no_progress")[0] == 0
  other_key = tmp_path / "other.key"
  run(capsys, "keygen", f"--key_file={other_key}")
  status, out, err = run(capsys, "decrypt", f"--key_file={other_key}",
                         f"--in={out_dir}", f"--out={dec_dir}")
  assert status == 1
  expected = encrypted_dataset.read_manifest(out_dir)["key_fingerprint"]
  assert "wrong key" in err and expected in err
  assert not os.path.exists(dec_dir)
  assert_key_absent(other_key, texts=(out, err))
  args = cli._parser().parse_args(["decrypt", f"--key_file={other_key}",
                                   f"--in={out_dir}", f"--out={dec_dir}"])
  with pytest.raises(encryption.KeyMismatchError):
    cli.cmd_decrypt(args)


# --------------------------------------------------------------------------
# Bad input


def test_unreadable_image_is_reported_by_name_and_split_left_incomplete(
    tmp_path, capsys, key_file, small_folder):
  out_dir = tmp_path / "enc"
  bad = sorted(glob.glob(os.path.join(small_folder, "val", CLASSES[1], "*")))[1]
  good_bytes = open(bad, "rb").read()
  with open(bad, "wb") as f:
    f.write(b"\xff\xd8 truncated garbage")
  argv = ("encrypt", f"--key_file={key_file}", f"--source=folder:{small_folder}",
          "--split=val", f"--out={out_dir}", "--no_progress")
  status, out, err = run(capsys, *argv)
  assert status == 1
  assert bad in err and "could not be encrypted" in err
  assert "val: 5 written, 0 already done, 1 failed" in out
  manifest = encrypted_dataset.read_manifest(out_dir)
  hashes = manifest["splits"]["val"].pop("sha256")
  assert manifest["splits"]["val"] == {
      "count": 6, "complete": False,
      "source_digest": manifest["splits"]["val"]["source_digest"]}
  # The failed image (index 4: class 0 holds 3 images) has no hash yet.
  assert [h is None for h in hashes] == [False] * 4 + [True, False]
  with pytest.raises(ValueError, match="incomplete"):
    encrypted_dataset.list_images(out_dir, manifest, "val")

  with open(bad, "wb") as f:  # fixed: the rerun completes the split
    f.write(good_bytes)
  status, out, _ = run(capsys, *argv)
  assert status == 0 and "val: 1 written, 5 already done, 0 failed" in out
  assert encrypted_dataset.read_manifest(out_dir)["splits"]["val"]["complete"]


def test_image_size_must_fit_the_block_size_unless_resized(
    tmp_path, capsys, key_file, small_folder):
  odd = tmp_path / "odd"
  for path in _files(small_folder):
    target = odd / os.path.relpath(path, small_folder)
    os.makedirs(target.parent, exist_ok=True)
    Image.open(path).convert("RGB").crop((0, 0, 100, 90)).save(
        target.with_suffix(".png"))
  out_dir = tmp_path / "enc"
  argv = ("encrypt", f"--key_file={key_file}", f"--source=folder:{odd}",
          "--split=val", f"--out={out_dir}", "--no_progress")
  status, _, err = run(capsys, *argv)
  assert status == 1
  assert "not a multiple of the block size 16" in err and "--resize" in err
  assert not os.path.exists(out_dir)

  status, _, err = run(capsys, *argv, "--resize=64,48")
  assert status == 0, err
  manifest, enc, _, _ = _read_dataset(out_dir, "val", 3)
  assert manifest["image_shape"] == [64, 48, 3] and enc.shape == (6, 64, 48, 3)

  # Without --resize, one image of another size is a per-image failure.
  other = tmp_path / "mixed"
  shutil.copytree(small_folder, other)
  victim = sorted(glob.glob(os.path.join(other, "val", CLASSES[0], "*")))[2]
  Image.open(victim).convert("RGB").crop((0, 0, 160, 160)).save(victim,
                                                                format="JPEG")
  status, _, err = run(capsys, "encrypt", f"--key_file={key_file}",
                       f"--source=folder:{other}", "--split=val",
                       f"--out={tmp_path / 'enc2'}", "--no_progress")
  assert status == 1 and "(160, 160, 3)" in err and "--resize" in err
  assert f"source image {victim} has shape" in err  # named by its source file


# Status 2: flags the encrypt face checks itself (a usage error); 1: settings
# the library refuses.
@pytest.mark.parametrize("flags,match,status", [
    (("--block_size=8",), "multiple of 16", 1),
    (("--scheme=le",), "not JPEG-compliant", 1),
    (("--format=png", "--quality=90"), "--format=jpeg only", 2),
    (("--quality=0",), r"\[1, 100\]", 2),
    (("--split=val[:3]",), "no tfds slicing", 1),
    (("--split=val,val",), "twice", 1),
])
def test_bad_settings_are_refused_before_writing(tmp_path, capsys, key_file,
                                                 small_folder, flags, match,
                                                 status):
  out_dir = tmp_path / "enc"
  argv = ["encrypt", f"--key_file={key_file}", f"--source=folder:{small_folder}",
          "--split=val", f"--out={out_dir}"]
  argv = [a for a in argv if not any(a.split("=")[0] == f.split("=")[0]
                                     for f in flags)] + list(flags)
  got, _, err = run(capsys, *argv)
  assert got == status
  assert re.search(match, err) and err.count("\n") == 1, err
  assert not os.path.exists(out_dir)


def test_block_8_with_444_is_accepted(tmp_path, capsys, key_file, small_folder):
  status, _, err = run(
      capsys, "encrypt", f"--key_file={key_file}", f"--source=folder:{small_folder}",
      "--split=val", f"--out={tmp_path / 'enc'}", "--block_size=8",
      "--subsampling=4:4:4", "--limit=2", "--no_progress")
  assert status == 0, err
  manifest = encrypted_dataset.read_manifest(tmp_path / "enc")
  assert manifest["chroma_subsampling"] == "4:4:4"
  assert manifest["splits"]["val"]["count"] == 2


def test_bad_sources_and_key_files(tmp_path, capsys, key_file, tfds_data_dir):
  out_dir = tmp_path / "enc"
  cases = [
      ((f"--key_file={key_file}", "--source=s3:bucket"), "tfds:NAME' or 'folder:ROOT"),
      ((f"--key_file={key_file}", f"--source=folder:{tmp_path / 'none'}"),
       "does not exist"),
      ((f"--key_file={key_file}", "--source=tfds:cifar10",
        f"--data_dir={tmp_path / 'empty_tfds'}"), "not prepared in"),
      ((f"--key_file={tmp_path / 'missing.key'}", "--source=tfds:cifar10"),
       "keygen"),
  ]
  for flags, match in cases:
    status, _, err = run(capsys, "encrypt", *flags, "--split=val",
                         f"--out={out_dir}")
    assert status == 1 and match in err, err
  os.chmod(key_file, 0o644)
  status, _, err = run(capsys, "encrypt", f"--key_file={key_file}",
                       "--source=tfds:cifar10", "--split=test",
                       f"--out={out_dir}")
  assert status == 1 and "chmod 600" in err
  assert not os.path.exists(out_dir)


def test_python_dash_m_entry_point(tmp_path, key_file, small_folder):
  out_dir = tmp_path / "enc"
  result = subprocess.run(
      [sys.executable, "-m", "etcjax.encrypt", "encrypt", f"--key_file={key_file}",
       f"--source=folder:{small_folder}", "--split=train,val", "--limit=2",
       f"--out={out_dir}"], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "key fingerprint" in result.stdout
  manifest = encrypted_dataset.read_manifest(out_dir)
  assert all(s["complete"] and s["count"] == 2
             for s in manifest["splits"].values())
  assert_key_absent(key_file, roots=(out_dir,),
                    texts=(result.stdout, result.stderr))
  usage = subprocess.run([sys.executable, "-m", "etcjax.encrypt", "encrypt"],
                         capture_output=True, text=True, timeout=120)
  assert usage.returncode == 2 and "required" in usage.stderr


def test_help_documents_the_commands(capsys):
  assert cli.main(["--help"]) == 0
  text = capsys.readouterr().out
  for word in ("keygen", "encrypt", "decrypt", "Resumable", "--overwrite",
               "--resize", "status 1"):
    assert word in text


# --------------------------------------------------------------------------
# tfds source


def test_load_tfds(tfds_data_dir):
  images, labels, names = tfds_source.load_tfds("cifar10", "test[:100]",
                                                tfds_data_dir)
  assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
  assert labels.shape == (100,) and labels.dtype == np.int32
  assert names[:3] == ["airplane", "automobile", "bird"] and len(names) == 10
  assert 0 <= labels.min() and labels.max() < 10 and len(set(labels)) > 5
  assert images.std() > 30  # real pixels, not zeros
  later, later_labels, _ = tfds_source.load_tfds("cifar10", "test[50:60]",
                                                 tfds_data_dir)
  np.testing.assert_array_equal(later, images[50:60])  # a stable order
  np.testing.assert_array_equal(later_labels, labels[50:60])
  assert tfds_source.split_size("cifar10", "test", tfds_data_dir) == 10000
  assert tfds_source.label_names("cifar10", tfds_data_dir) == names
  assert tfds_source.version("cifar10", tfds_data_dir) == "3.0.2"


def test_load_tfds_errors(tmp_path, tfds_data_dir):
  with pytest.raises(FileNotFoundError,
                     match=f"not prepared in {tmp_path}.*tfds build cifar10"):
    tfds_source.load_tfds("cifar10", "test", str(tmp_path))
  assert not os.listdir(tmp_path)  # nothing was downloaded
  with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', 'train'\]"):
    tfds_source.load_tfds("cifar10", "validation", tfds_data_dir)
  with pytest.raises(ValueError, match="unknown tfds dataset"):
    tfds_source.load_tfds("no_such_dataset_xyz", "train", tfds_data_dir)


def test_concurrent_runs_into_one_folder_are_refused(tmp_path, capsys,
                                                      key_file, small_folder):
  out_dir = tmp_path / "enc"
  argv = ("encrypt", f"--key_file={key_file}", f"--source=folder:{small_folder}",
          "--split=train", f"--out={out_dir}", "--no_progress")
  with encrypted_writer.locked(str(out_dir)):  # another run, still writing
    status, _, err = run(capsys, *argv)
    assert status == 1
    assert "another etcjax.encrypt run (pid" in err and str(out_dir) in err
    assert not os.path.exists(out_dir / encrypted_dataset.MANIFEST_FILE)
  # Once it is done (or died: the kernel drops its lock), a run proceeds,
  # and the lock file does not make the folder look foreign.
  status, _, err = run(capsys, *argv)
  assert status == 0, err
