"""JPEG and PNG coding of image batches, and the JPEG-compliance rule of EtC.

EtC images are meant to be compressed after encryption. They survive
standard JPEG only when every encryption block is a whole number of JPEG
minimum coded units (MCUs): blocks scrambled, rotated or inverted as a unit
then map to whole MCUs, so the codec's 8x8 DCT and chroma subsampling never
mix pixels of two encryption blocks. The MCU is 16x16 with 4:2:0 chroma
subsampling and 8x8 with 4:4:4 or for single-channel (grayscale) images,
such as those of grayscale-based EtC.

Encoding uses PIL (libjpeg-turbo, zlib); `quality` is the IJG quality
factor (1-100) that papers on EtC call QF.

Decoding of colour JPEGs replicates each chroma sample over its 2x2 pixels
by default (libjpeg's `do_fancy_upsampling = FALSE`, through
`tf.io.decode_jpeg(fancy_upscaling=False)`; PIL cannot switch it off).
libjpeg's default "fancy" upsampling interpolates chroma across MCU
boundaries, i.e. across encryption blocks that scrambling and
negative-positive transformation made unrelated, which breaks compliance:
at QF 85, 4:2:0, B = 16, decrypted EtC JPEGs measured 0.6 dB (CIFAR-10) and
4.8 dB (Imagenette) PSNR below the plain images' JPEGs with fancy
upsampling, and within 0.2 dB without it (see tests/encryption/test_jpeg.py).
Anything that decodes EtC JPEGs (the training input pipeline too) should
decode the same way.
"""

from __future__ import annotations

import io
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from etcjax import errors
from etcjax.encryption import plans
from etcjax.encryption import schemes

# PIL's `subsampling` codes for the chroma subsampling names we support.
SUBSAMPLINGS = {"4:4:4": 0, "4:2:0": 2}
# Codec name -> file extension of the encrypted-dataset layout.
CODECS = {"jpeg": ".jpg", "png": ".png"}


class JpegParameterError(errors.UserError, ValueError):
  """Codec settings that cannot be used: an unknown codec, chroma
  subsampling or channel count, a quality outside [1, 100], or a scheme or
  block size that is not JPEG-compliant."""


class UndecodableImageError(errors.UserError, ValueError):
  """Bytes that are not a readable image (a damaged or foreign file)."""


def mcu_size(subsampling: Optional[str], channels: int = 3) -> int:
  """Side of a JPEG minimum coded unit.

  Args:
    subsampling: '4:2:0' or '4:4:4' (ignored for single-channel images; may
      be None then).
    channels: 1 (grayscale JPEG) or 3 (YCbCr JPEG).

  Returns:
    16 for 3-channel 4:2:0, else 8.
  """
  if channels == 1:
    return 8
  _check_subsampling(subsampling)
  return 16 if subsampling == "4:2:0" else 8


def _check_subsampling(subsampling) -> None:
  if subsampling not in SUBSAMPLINGS:
    raise JpegParameterError(
        f"chroma subsampling must be one of {sorted(SUBSAMPLINGS)}, got "
        f"{subsampling!r}")


def check_jpeg_compatible(scheme: str, block_size: Optional[int],
                          subsampling: Optional[str] = "4:2:0",
                          allow_noncompliant: bool = False) -> None:
  """Raises unless a scheme's images survive JPEG with this subsampling.

  JPEG-compliant schemes (`Scheme.jpeg_compliant`: 'etc', 'etc_gray',
  'block_common') need a block size that is a multiple of the MCU side
  (16 for 4:2:0, 8 for 4:4:4; 8 for 'etc_gray', whose encrypted images are
  grayscale and have no chroma). The baselines 'le', 'ele', 'pe' and
  'pe_per_image' are not designed for JPEG at all (their decrypted JPEG
  images are badly degraded); they are refused unless `allow_noncompliant`
  is True, which only the compressibility evaluation should pass (it needs
  their JPEG file sizes for the comparison of the paper's Table IV).

  Args:
    scheme: a scheme name in `etcjax.encryption.SCHEMES`.
    block_size: block side in pixels; the scheme's default when None.
    subsampling: '4:2:0' or '4:4:4'.
    allow_noncompliant: accept schemes that are not JPEG-compliant.

  Raises:
    ValueError: the combination does not survive JPEG (the message says
      which block sizes or subsampling would).
  """
  spec = schemes.get_scheme(scheme)
  block_size = spec.default_block_size if block_size is None else block_size
  channels = 1 if spec.representation == plans.YCBCR_GRAY else 3
  if channels == 3:
    _check_subsampling(subsampling)
  if not spec.jpeg_compliant:
    if allow_noncompliant:
      return
    raise JpegParameterError(
        f"scheme {scheme!r} is not JPEG-compliant (it is not designed to "
        "survive JPEG compression); write it losslessly (PNG) instead, or use "
        "a JPEG-compliant scheme: "
        f"{sorted(n for n, s in schemes.SCHEMES.items() if s.jpeg_compliant)}")
  mcu = mcu_size(subsampling, channels)
  if block_size % mcu:
    if channels == 1:
      detail = "grayscale JPEG codes 8x8 blocks"
    else:
      detail = (f"JPEG with {subsampling} chroma subsampling codes "
                f"{mcu}x{mcu} units")
      if subsampling == "4:2:0" and block_size % 8 == 0:
        detail += "; use 4:4:4 subsampling for this block size"
    raise JpegParameterError(
        f"block size {block_size} of scheme {scheme!r} is not JPEG-compliant: "
        f"{detail}, so the block size must be a multiple of {mcu}")


def _check_images(images) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise plans.ImageDtypeError(
        f"images must be uint8 in [0, 255], got dtype {images.dtype}")
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise plans.ImageShapeError(
        "images must have shape [N, H, W, C] with C = 1 (grayscale) or 3 "
        f"(RGB), got {images.shape}")
  return images


def _to_pil(image: np.ndarray) -> Image.Image:
  if image.shape[-1] == 1:
    return Image.fromarray(image[..., 0], mode="L")
  return Image.fromarray(image, mode="RGB")


def encode_jpeg_image(image: np.ndarray, quality: int,
                      subsampling: str = "4:2:0") -> bytes:
  """Encodes one image as baseline JPEG.

  Args:
    image: uint8 `[H, W, C]`, C = 1 (written as a grayscale JPEG) or 3.
    quality: IJG quality factor in [1, 100].
    subsampling: '4:2:0' or '4:4:4' chroma subsampling (unused for C = 1).

  Returns:
    The JPEG file's bytes.
  """
  if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
      or not 1 <= quality <= 100:
    raise JpegParameterError(
        f"JPEG quality must be an integer in [1, 100], got {quality!r}")
  _check_subsampling(subsampling)
  buffer = io.BytesIO()
  _to_pil(image).save(buffer, format="JPEG", quality=int(quality),
                      subsampling=SUBSAMPLINGS[subsampling])
  return buffer.getvalue()


def encode_png_image(image: np.ndarray) -> bytes:
  """Encodes one image as PNG (lossless).

  Args:
    image: uint8 `[H, W, C]`, C = 1 (grayscale PNG) or 3 (RGB PNG).

  Returns:
    The PNG file's bytes.
  """
  buffer = io.BytesIO()
  _to_pil(image).save(buffer, format="PNG")
  return buffer.getvalue()


def encode_jpeg(images, quality: int, subsampling: str = "4:2:0") -> List[bytes]:
  """Encodes a batch of images as JPEG files.

  Args:
    images: uint8 `[N, H, W, C]` in [0, 255]; C = 1 gives grayscale JPEGs
      (e.g. grayscale-based EtC images), C = 3 colour JPEGs.
    quality: IJG quality factor in [1, 100].
    subsampling: '4:2:0' or '4:4:4' chroma subsampling (unused for C = 1).

  Returns:
    N byte strings, one JPEG file each.
  """
  images = _check_images(images)
  return [encode_jpeg_image(image, quality, subsampling) for image in images]


def encode_png(images) -> List[bytes]:
  """Encodes a batch of images as PNG files (lossless).

  Args:
    images: uint8 `[N, H, W, C]` in [0, 255], C = 1 or 3.

  Returns:
    N byte strings, one PNG file each.
  """
  return [encode_png_image(image) for image in _check_images(images)]


def encode(images, codec: str, quality: Optional[int] = None,
           subsampling: Optional[str] = "4:2:0") -> List[bytes]:
  """Encodes a batch with a codec named in `CODECS` ('jpeg' or 'png').

  Args:
    images: uint8 `[N, H, W, C]`, C = 1 or 3.
    codec: 'jpeg' or 'png'.
    quality, subsampling: JPEG settings (ignored for PNG).

  Returns:
    N encoded files.
  """
  if codec == "jpeg":
    return encode_jpeg(images, quality, subsampling)
  if codec == "png":
    return encode_png(images)
  raise JpegParameterError(
      f"codec must be one of {sorted(CODECS)}, got {codec!r}")


def _decode_jpeg_replicating_chroma(data: bytes, channels: Optional[int],
                                    name: str) -> np.ndarray:
  # Imported on use: tensorflow takes seconds to import.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    image = tf.io.decode_jpeg(data, channels=channels or 0,
                              fancy_upscaling=False)
  except tf.errors.InvalidArgumentError as e:
    raise UndecodableImageError(f"cannot decode {name}: {e.message}") from None
  image = image.numpy()
  if channels is None and image.shape[-1] not in (1, 3):
    image = image[..., :3]  # CMYK-like JPEGs; not produced by this module.
  return image


def decode_image(data: bytes, channels: Optional[int] = None,
                 name: str = "image",
                 fancy_upsampling: bool = False) -> np.ndarray:
  """Decodes one JPEG or PNG (or any PIL-readable) file.

  Args:
    data: the file's bytes.
    channels: 1 or 3 to force grayscale or RGB; None keeps grayscale files
      single-channel and converts everything else to RGB.
    name: how error messages refer to the file.
    fancy_upsampling: for colour JPEGs with subsampled chroma, interpolate
      chroma across MCU boundaries (libjpeg's and PIL's default) instead of
      replicating it; False keeps EtC images JPEG-compliant (see the module
      docstring).

  Returns:
    uint8 `[H, W, C]` in [0, 255].

  Raises:
    UndecodableImageError (a ValueError): the bytes are not a readable
      image.
  """
  if channels not in (None, 1, 3):
    raise JpegParameterError(
        f"channels must be None, 1 or 3, got {channels!r}")
  if not fancy_upsampling and bytes(data[:2]) == b"\xff\xd8":
    return _decode_jpeg_replicating_chroma(data, channels, name)
  try:
    with Image.open(io.BytesIO(data)) as image:
      if channels is None:
        channels = 1 if image.mode in ("L", "I;16", "I", "1") else 3
      array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
  except (OSError, SyntaxError, ValueError) as e:
    raise UndecodableImageError(f"cannot decode {name}: {e}") from None
  return array.reshape(array.shape[:2] + (channels,))


def decode(files: Sequence[bytes], channels: Optional[int] = None,
           fancy_upsampling: bool = False) -> np.ndarray:
  """Decodes a batch of same-size image files.

  Args:
    files: N encoded images (JPEG, PNG, ...).
    channels: as for `decode_image`; None takes every file's own (grayscale
      -> 1, else 3), which must then agree.
    fancy_upsampling: as for `decode_image` (False: EtC-compliant).

  Returns:
    uint8 `[N, H, W, C]` in [0, 255].

  Raises:
    ValueError: a file is unreadable, or files differ in size or channels.
  """
  if not len(files):
    raise ValueError("decode needs at least one file, got none")
  images = [decode_image(data, channels, f"file {i} of the batch",
                         fancy_upsampling)
            for i, data in enumerate(files)]
  shapes = {image.shape for image in images}
  if len(shapes) > 1:
    raise plans.ImageShapeError(
        f"files of a batch must decode to one shape, got {sorted(shapes)}")
  return np.stack(images)


def jpeg_round_trip(images, quality: int, subsampling: str = "4:2:0",
                    fancy_upsampling: bool = False) -> np.ndarray:
  """Compresses and decompresses images with JPEG.

  Args:
    images: uint8 `[N, H, W, C]`, C = 1 or 3.
    quality: IJG quality factor in [1, 100].
    subsampling: '4:2:0' or '4:4:4' (unused for C = 1).
    fancy_upsampling: as for `decode_image` (False: EtC-compliant).

  Returns:
    uint8 `[N, H, W, C]`: the decoded JPEG images, same shape as `images`.
  """
  images = _check_images(images)
  return decode(encode_jpeg(images, quality, subsampling),
                images.shape[-1], fancy_upsampling)
