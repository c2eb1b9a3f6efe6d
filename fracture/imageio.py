"""The one image decoder: training, `predict`, CAMs and the web app all call `decode_gray`.

    decode_gray(source, max_pixels=DEFAULT_MAX_PIXELS) -> 2-D uint8 array
    source: a file path (str or Path) or the file's bytes

What it does, in order:

1. **Recognise** the file by its bytes, never by its name: DICOM by `DICM` at offset 128, anything
   else by Pillow's header parser (PNG, JPEG, BMP, TIFF, WebP, GIF, ...).
2. **Check the size from the header alone**, before any pixel is decoded: width x height (x frames
   for DICOM) above `max_pixels` (default 40,000,000; `Config.max_pixels`, `FRACTURE_MAX_PIXELS` in
   the web app) is an `ImageError`. A 200 KB PNG can claim 40000x40000 pixels; decoding it would
   take GBs or crash OpenCV, whose own limit (`CV_IO_MAX_IMAGE_PIXELS`, ~1 GP) is never reached.
3. **Refuse truncated files**: a PNG without its IEND chunk, a JPEG without the EOI marker after its
   first scan (OpenCV's `imread` fills the missing rows with grey and says nothing).
4. **Decode pixels**: OpenCV for what it reads natively (fast, any bit depth), Pillow for the rest
   (CMYK JPEG, odd modes). DICOM through pydicom: first frame only, the modality LUT
   (rescale slope/intercept) and the VOI LUT (window centre/width) applied, MONOCHROME1 inverted.
   Compressed DICOM (JPEG Lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE) decodes through pydicom's
   plugins (python-gdcm, pylibjpeg-openjpeg, pylibjpeg-rle: fracture/dicomcodecs.py); a lossless
   file gives the same bytes as its uncompressed original. A syntax without an installed plugin is
   an `ImageError` naming the syntax and the package that would decode it.
   The EXIF orientation tag is applied (OpenCV ignores it when it keeps the bit depth).
5. **One bit-depth rule**: the image is converted to gray and contrast-stretched per image, so its
   darkest pixel becomes 0 and its brightest 255 (a constant image becomes all zeros):
   `out = floor((x - min) * 255 / (max - min) + 1/2)`, computed exactly on integers. Hence the
   same picture stored as an 8-bit PNG, as a 16-bit PNG with values x257, or as a 16-bit PNG with
   the 8-bit values unscaled gives byte-identical output.

Whatever a decoder raises on hostile bytes (cv2.error, pydicom and Pillow errors, ValueError,
MemoryError, ...) comes out as `ImageError(reason)`, never as a traceback.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from fracture.config import Config
from fracture.dicomcodecs import check_decodable
from fracture.errors import ImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = Config.max_pixels  # header width x height (x frames) above this is refused
DECODER_VERSION = 3  # part of the decode-cache key: bump whenever decoded pixels change
NOT_AN_IMAGE = "not a readable image (PNG, JPEG, BMP, TIFF or DICOM expected)"
PNG_END = b"\0\0\0\0IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC; the last 12 bytes of a PNG
OPENCV_FORMATS = {"PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM"}  # Pillow's format names OpenCV decodes
OPENCV_MODES = {"L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F", "P", "1"}


def is_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def is_dicom_file(path) -> bool:
    """True when the file's bytes say DICOM (reads 132 bytes); False for unreadable files."""
    try:
        with open(path, "rb") as f:
            return is_dicom(f.read(133))
    except OSError:
        return False


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"}


def is_image_file(path: Path) -> bool:
    """An image suffix, or any other name whose bytes say DICOM (scanners name files by UID,
    `1.2.840.113619.2.55.3.4`, or give them no suffix at all). macOS junk (`._image1.png`,
    `.DS_Store`) is skipped whatever it holds."""
    if path.name.startswith("."):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(path)


def decode_gray(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A file path or the file's bytes -> 2-D uint8 gray, stretched to 0..255 (module doc)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "upload"
    else:
        name = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read {name}: {exc.strerror or exc}") from exc
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        image = _decode_dicom(data, max_pixels) if is_dicom(data) else _decode_other(data, max_pixels)
        return stretch(to_gray(image))
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError("not enough memory to decode this image") from exc
    except Exception as exc:  # noqa: BLE001 - hostile bytes: every decoder raises its own types
        log.debug("decoder failed on %s", name, exc_info=True)
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ImageError(f"cannot decode the image ({type(exc).__name__}: {first_line})") from exc


def read_gray(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """`decode_gray` for a file path (the public `fracture.read_gray`)."""
    return decode_gray(Path(path), max_pixels)


# --------------------------------------------------------------------------------------------
# the size check: header only
# --------------------------------------------------------------------------------------------
def check_pixels(width: int, height: int, frames: int, max_pixels: int) -> None:
    pixels = width * height * frames
    if pixels > max_pixels:
        raise ImageError(f"too many pixels: the header says {width}x{height}"
                         f"{f'x{frames} frames' if frames > 1 else ''} = {pixels:,}, the limit is {max_pixels:,}")
    if pixels <= 0:
        raise ImageError(f"empty image: the header says {width}x{height}")


# --------------------------------------------------------------------------------------------
# PNG, JPEG, BMP, TIFF ...
# --------------------------------------------------------------------------------------------
def _decode_other(data: bytes, max_pixels: int) -> tuple:
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))  # parses the header; pixels stay undecoded
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit (~179 MP)
        raise ImageError(f"too many pixels: {exc}") from exc
    except Exception as exc:
        raise ImageError(NOT_AN_IMAGE) from exc
    with image:
        width, height = image.size
        check_pixels(width, height, 1, max_pixels)
        _check_complete(data, image.format)
        orientation = _orientation(image, data)
        if image.format in OPENCV_FORMATS and image.mode in OPENCV_MODES:
            pixels = _opencv_decode(data)
            order = "BGR"
        else:
            pixels = None
        if pixels is None:  # a format or mode OpenCV lacks (CMYK JPEG, ...), or OpenCV refused it
            pixels, order = _pillow_decode(image), "RGB"
    return _orient(pixels, orientation), order


def _check_complete(data: bytes, fmt: str) -> None:
    if fmt == "PNG" and data.rfind(PNG_END) < 0:
        raise ImageError("truncated PNG: the file ends before its IEND chunk")
    if fmt == "JPEG" and data.find(b"\xff\xd9", _jpeg_scan_start(data)) < 0:
        raise ImageError("truncated JPEG: the file ends before its end-of-image marker")


def _jpeg_scan_start(data: bytes) -> int:
    """Offset of the first start-of-scan segment. Walking the marker segments skips the EXIF
    thumbnail (a whole JPEG, EOI included, inside APP1); after SOS, 0xFFD9 can only be the real
    end-of-image marker, because the entropy-coded data escapes every 0xFF byte as 0xFF00."""
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return pos  # not a marker: stop walking, search from here
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA or 0xD0 <= marker <= 0xD9 or marker == 0x01:
            return pos  # SOS (or a marker without a length)
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return min(pos, len(data))


def _orientation(image, data: bytes) -> int:
    """The EXIF orientation tag (1 = as stored). PNG keeps EXIF in an eXIf chunk; Pillow decodes
    the whole PNG to look for one, so it is only asked when the chunk is there."""
    if image.format == "PNG" and b"eXIf" not in data:
        return 1
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return 1


def _opencv_decode(data: bytes) -> np.ndarray | None:
    import cv2

    # IMREAD_UNCHANGED keeps 16-bit depth and ignores the EXIF orientation (applied by _orient).
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _pillow_decode(image) -> np.ndarray:
    """Full decode by Pillow; a truncated file raises (LOAD_TRUNCATED_IMAGES stays off)."""
    try:
        image.load()
    except Exception as exc:
        raise ImageError(f"cannot decode the image ({type(exc).__name__}: {exc})") from exc
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "RGB", "RGBA", "LA"):
        return np.asarray(image)
    return np.asarray(image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB"))


# EXIF orientation -> the numpy operation that shows the picture upright (TIFF/EXIF spec, tag 274)
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    turn = _ORIENT.get(orientation)
    return np.ascontiguousarray(turn(pixels)) if turn else pixels


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------
def _decode_dicom(data: bytes, max_pixels: int) -> tuple:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data))  # parses elements; PixelData stays raw bytes
        width, height = int(ds.Columns), int(ds.Rows)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except Exception as exc:  # pydicom raises many types for a broken header
        raise ImageError(f"cannot read DICOM header: {exc}") from exc
    check_pixels(width, height, frames, max_pixels)
    check_decodable(ds)  # a compressed syntax without its plugin: say which syntax and which package
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    try:
        # index=0: only the first frame is decoded (a series' first frame is the radiograph)
        image = pixel_array(ds, index=0)
    except Exception as exc:
        raise ImageError(f"cannot decode DICOM pixels: {exc}") from exc
    if not photometric.startswith("MONOCHROME"):
        return image, "RGB"  # pydicom returns colour as RGB (YBR converted)
    image = apply_modality_lut(image, ds)  # stored values -> e.g. Hounsfield units
    image = apply_voi_lut(image, ds, index=0)  # window centre/width or VOI LUT: what to show
    if photometric == "MONOCHROME1":
        # MONOCHROME1 stores bone dark; flip to the usual look. Negation is enough: the stretch
        # that follows maps the new darkest pixel to 0.
        image = -np.asarray(image, np.float64)
    return image, "GRAY"


# --------------------------------------------------------------------------------------------
# gray and the bit-depth rule
# --------------------------------------------------------------------------------------------
def to_gray(decoded) -> np.ndarray:
    """(pixels, channel order) -> 2-D array of the same dtype (alpha dropped)."""
    import cv2

    image, order = decoded if isinstance(decoded, tuple) else (decoded, "BGR")
    if image.ndim == 3 and image.shape[2] in (1, 2):  # gray, gray + alpha
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        if image.dtype not in (np.uint8, np.uint16, np.float32):
            image = image.astype(np.float32)
        code = {("BGR", 3): cv2.COLOR_BGR2GRAY, ("BGR", 4): cv2.COLOR_BGRA2GRAY,
                ("RGB", 3): cv2.COLOR_RGB2GRAY, ("RGB", 4): cv2.COLOR_RGBA2GRAY}[order, image.shape[2]]
        image = cv2.cvtColor(np.ascontiguousarray(image), code)
    if image.ndim != 2 or image.size == 0:
        raise ImageError(f"unexpected image shape {image.shape}")
    return image


def stretch(image: np.ndarray) -> np.ndarray:
    """Darkest pixel -> 0, brightest -> 255, linear in between, rounded half up; constant -> 0.

    Integers are mapped exactly (floor((2*(x-lo)*255 + span) / (2*span))), so scaling every value
    by the same factor (x257 for 8 -> 16 bit) cannot change a single output byte.
    """
    lo, hi = image.min(), image.max()
    if image.dtype.kind in "ui":
        lo, hi = int(lo), int(hi)
        span = hi - lo
        if span == 0:
            return np.zeros(image.shape, np.uint8)
        if image.dtype == np.uint8 and lo == 0 and hi == 255:
            return image  # already full range: nothing to do (the common 8-bit X-ray)
        if image.dtype in (np.uint8, np.uint16):  # a lookup table indexed by the pixel values
            import cv2

            values = np.arange(256 if image.dtype == np.uint8 else hi + 1, dtype=np.int64)
            table = ((2 * (values - lo) * 255 + span) // (2 * span)).clip(0, 255).astype(np.uint8)
            # cv2.LUT: ~10x faster than numpy fancy indexing on 8-bit images
            return cv2.LUT(image, table) if image.dtype == np.uint8 else np.take(table, image)
        shifted = image.astype(np.int64) - lo
        return ((2 * shifted * 255 + span) // (2 * span)).astype(np.uint8)
    image = np.asarray(image, np.float64)
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageError("the image holds NaN or infinite values")
    if hi == lo:
        return np.zeros(image.shape, np.uint8)
    return np.floor((image - lo) * (255.0 / (hi - lo)) + 0.5).clip(0, 255).astype(np.uint8)
