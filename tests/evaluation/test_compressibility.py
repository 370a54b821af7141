"""Compressibility: codecs, sizes of real images, the task's outputs."""

import json
import os

import numpy as np
import pytest

from etcjax.evaluation import compressibility
from etcjax.evaluation import sources
from etcjax.evaluation import tables

KEY = bytes(range(32))


def test_lossless_codecs_decode_exactly_and_raw_is_the_pixel_count():
  import imagecodecs
  rng = np.random.default_rng(0)
  # Noise: the case where CharLS needs more room than the raw image.
  image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
  decoders = {"jpegls": imagecodecs.jpegls_decode,
              "jpeg2000": imagecodecs.jpeg2k_decode,
              "jpeg2000_nomct": imagecodecs.jpeg2k_decode,
              "png": imagecodecs.png_decode}
  for name, decode in decoders.items():
    assert compressibility.CODECS[name].lossless
    np.testing.assert_array_equal(decode(compressibility.CODECS[name].encode(image)),
                                  image)
  gray = image[..., :1]
  np.testing.assert_array_equal(
      imagecodecs.jpegls_decode(compressibility.CODECS["jpegls"].encode(gray)),
      gray[..., 0])
  sizes = compressibility.file_sizes(np.stack([image, image]), ["raw", "png"])
  np.testing.assert_array_equal(sizes["raw"], [32 * 48 * 3] * 2)


def test_unknown_codec_is_refused_with_the_list():
  with pytest.raises(ValueError, match="known codecs: .*jpegls"):
    compressibility.check_codecs(["jpeg", "webp"])


@pytest.fixture(scope="module")
def cifar(tfds_data_dir):
  return sources.load("cifar10", "test", data_dir=tfds_data_dir, limit=300)


def test_etc_costs_almost_nothing_in_file_size_on_cifar10(cifar):
  plain = compressibility.file_sizes(cifar.images,
                                     ["jpeg_q85", "jpegls", "jpeg2000_nomct"])
  etc = compressibility.file_sizes(sources.encrypt(cifar, KEY, "etc"),
                                   ["jpeg_q85", "jpegls", "jpeg2000_nomct"])
  ele = compressibility.file_sizes(sources.encrypt(cifar, KEY, "ele"),
                                   ["jpeg_q85"])
  ratio = {c: etc[c].sum() / plain[c].sum() for c in etc}
  # Paper Table IV: 1.004 (JPEG), 1.028 (JPEG-LS), 1.041 (JPEG 2000).
  assert 0.99 < ratio["jpeg_q85"] < 1.01
  assert 1.0 < ratio["jpegls"] < 1.06
  assert 1.0 < ratio["jpeg2000_nomct"] < 1.07
  assert ele["jpeg_q85"].sum() / plain["jpeg_q85"].sum() > 1.2


def test_rate_distortion_of_etc_follows_plain_jpeg(cifar):
  images = sources.Images("cifar10", "test", cifar.images[:48],
                          cifar.labels[:48], cifar.indices[:48],
                          cifar.label_names)
  points = compressibility.rate_distortion(images, KEY, ["etc", "pe"], [85],
                                           progress=False)
  by = {p.scheme: p for p in points}
  assert abs(by["etc"].psnr - by["plain"].psnr) < 0.5
  assert abs(by["etc"].bpp - by["plain"].bpp) / by["plain"].bpp < 0.02
  assert by["pe"].psnr < by["plain"].psnr - 10  # PE is not JPEG-compliant.


def test_compressibility_task_writes_tables_and_figure(tfds_data_dir, tmp_path):
  path = compressibility.run(
      "cifar10", KEY, str(tmp_path), size="smoke", schemes=["etc", "etc_gray"],
      codec_names=["jpeg_q85", "jpeg_q80", "jpegls", "raw"],
      data_dir=tfds_data_dir, progress=False)
  assert path == os.path.join(str(tmp_path), "compressibility", "cifar10")
  for name in ("file_sizes.csv", "file_sizes.md", "ratios.md",
               "paper_table_iv.md", "rate_distortion.csv",
               "rate_distortion.png", "meta.json"):
    assert os.path.exists(os.path.join(path, name)), name
  meta = open(os.path.join(path, "meta.json")).read()
  assert KEY.hex() not in meta and "key_fingerprint" in meta
  assert '"images": 300' in meta  # smoke: 150 per split.
  with pytest.raises(FileExistsError, match="--overwrite"):
    compressibility.run("cifar10", KEY, str(tmp_path), size="smoke",
                        data_dir=tfds_data_dir, progress=False)


def test_compressibility_limit_codes_that_many_images_per_split(tfds_data_dir,
                                                              tmp_path):
  path = compressibility.run(
      "cifar10", KEY, str(tmp_path), size="full", schemes=["etc"],
      codec_names=["raw"], data_dir=tfds_data_dir, limit=20, progress=False)
  meta = json.load(open(os.path.join(path, "meta.json")))
  assert meta["images_per_split"] == {"test": 20, "train": 20}
  assert meta["limit"] == 20
  _, rows = tables.read_csv(os.path.join(path, "file_sizes.csv"))
  assert float(rows[0]["plain"]) == pytest.approx(40 * 3072 / 2**20, abs=1e-3)


def test_missing_data_is_reported_with_its_location(tmp_path):
  with pytest.raises(FileNotFoundError, match="not prepared"):
    compressibility.run("cifar10", KEY, str(tmp_path), size="smoke",
                        data_dir=str(tmp_path / "nowhere"), progress=False)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    compressibility.run("imagenette", KEY, str(tmp_path), size="smoke",
                        imagenette_dir=str(tmp_path / "nowhere"),
                        progress=False)
  assert not os.path.exists(tmp_path / "compressibility" / "cifar10")
