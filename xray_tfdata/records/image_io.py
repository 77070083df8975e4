"""Source images in, uniform 8-bit grayscale out: the converter's decode step.

Runs inside the converter's worker processes, so it imports only numpy and OpenCV (never
TensorFlow). Every source file, whatever its format and mode, becomes one `HxW uint8` gray array
plus a `SourceInfo` describing the original (kept in each tf.Example for the shortcut probe).
What the file is (format, mode, size) comes from its header (image_format.py); the resize and
encode that follow live in resize.py.

Decisions:
- BMP mode comes from the decoded channel count (the header is not always honest about it).
  16-bit sources are scaled to 8 bits by their actual min..max range, so a 12-bit X-ray stored
  in 16 bits is not truncated to its top (nearly black) bits. DICOM has its own rules
  (records/dicom.py: modality LUT, window, MONOCHROME1, BitsStored).
- Alpha is dropped (not composited), as PIL's convert("L") and TF's decode_png(channels=3) do,
  so the serving path can mirror it.
- EXIF orientation (JPEG, PNG eXIf) is applied as cv2.imread applies it: a photo stored
  landscape with orientation 6 comes out portrait, and SourceInfo's width x height is the image
  as displayed. It is parsed here (not left to OpenCV) so serving/export.py can apply the very
  same rule in TensorFlow ops; the tests hold both to cv2.imread for all eight orientations.
- JPEGs are decoded straight to gray by libjpeg (the luma channel Y = 0.299R + 0.587G + 0.114B,
  within 1 level of cv2.COLOR_BGR2GRAY); their mode and original size come from the SOF header.
  With `target_size`, a JPEG at least 4x larger than needed is decoded at 1/2 scale by
  libjpeg's DCT scaling (so still >= 2x the target side): about 1.7x faster, and after the area
  resize within 1 gray level on average (max 4) of a full decode. 1/4 scale is not used: it was
  no faster (entropy decoding dominates) and up to 9 levels off on fine detail.
- Truncation is decided by whether decoding completed, not by the last two bytes: bytes after a
  JPEG's EOI marker are valid (editors and cameras append trailers; one public COVID JPEG has 16
  such bytes). A JPEG is truncated when no EOI marker sits in its last MiB, or libjpeg reports
  "premature end of JPEG file" (OpenCV 5 returns nothing, older builds fill grey); libjpeg's
  warnings go straight to the process's stderr, so they are captured around the decode (harmless
  ones such as "extraneous bytes before marker" are tolerated). A PNG must have a well-formed
  chunk sequence ending in IEND, a BMP must be as long as its header says.
- The pixel count is checked from the header before decoding (`max_pixels`), so an oversized
  image gets a plain reason instead of OpenCV's assertion text or an out-of-memory worker; so are
  the decoded bytes and a JPEG's scan count (image_format.check_decode_cost).
- `failure_reason` words any other exception a source raises (the converter's per-source
  boundary): our words plus the exception's type name, never its text, which can quote a
  malformed tag's value (a patient name in NumberOfFrames).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

from xray_tfdata.records import dicom, image_format
from xray_tfdata.records.image_format import SOURCE_FORMATS, ImageReadError  # noqa: F401

# The resize/encode half of the old image_io, re-exported so sources.py, convert.py and
# build_records.py keep working unchanged; new code imports records.resize directly.
from xray_tfdata.records.resize import (  # noqa: F401
    ENCODE_FORMATS,
    LUMA_BT601,
    RESIZE_MODES,
    encode,
    resize,
    to_channels,
)

# Decoding failures are reported through ImageReadError (and land in the manifest); OpenCV's own
# stderr warnings would only duplicate them once per bad file in every worker.
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # older OpenCV builds without the logging module
    pass

# 200 Mpixel (about 14000 x 14000): 10x the largest chest detectors (4300 x 4300 = 18 Mpixel), and
# a gray decode of that size is 200 MB per worker. OpenCV's own ceiling (CV_IO_MAX_IMAGE_PIXELS)
# is 2^30; above it imdecode fails with an assertion, so the limit may not exceed it.
DEFAULT_MAX_PIXELS = 200_000_000
OPENCV_MAX_PIXELS = 1 << 30
# DCT-domain reduced decode (see decode_source_bytes' target_size and the module docstring).
_JPEG_REDUCED = ((2, cv2.IMREAD_REDUCED_GRAYSCALE_2),)
# libjpeg warnings that mean the pixels are wrong (grey fill or garbage), not merely odd framing.
_JPEG_FATAL = re.compile(
    r"premature end|huffman|invalid|bogus|corrupt jpeg data: (?!\d+ extraneous bytes)", re.I
)
# "Premature end of JPEG file" (the data ran out); "premature end of data segment" is a marker
# met inside damaged scan data, which is corruption, not truncation.
_JPEG_TRUNCATED = re.compile(r"premature end of jpeg file", re.I)
_CODEC_LINE = re.compile(
    r"^(corrupt jpeg data|premature end|invalid|bogus|unsupported|warning|libpng)", re.I
)


@dataclasses.dataclass(frozen=True, slots=True)  # one per source: no per-object __dict__
class SourceInfo:
    """What the original file was (before gray conversion and resizing)."""

    width: int  # as displayed: after EXIF orientation
    height: int
    mode: str  # "L", "LA", "RGB", "RGBA", "P", "I;16", "RGB;16", "RGBA;16", "LA;16", "1";
    #            DICOM: its PhotometricInterpretation ("MONOCHROME1", "MONOCHROME2", "RGB")
    format: str  # one of image_format.SOURCE_FORMATS, sniffed from the bytes
    num_bytes: int
    sha256: str
    # Technical tags (name, value) of a DICOM source (dicom.TECHNICAL_TAGS; never patient data);
    # empty for other formats. A tuple (not a dict) so the dataclass stays hashable, and a class
    # default so SourceInfo pickled by an older converter (a resumed spill) still reads.
    tags: tuple[tuple[str, str], ...] = ()


def read_source(path: str | Path, *, target_size: int = 0,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, SourceInfo]:
    """Reads and decodes one source file into an `HxW uint8` gray array and its SourceInfo.

    `target_size` and `max_pixels`: see `decode_source_bytes`.

    Raises:
      ImageReadError: the file is unreadable, empty, truncated, corrupt, too large or not a
        JPEG/PNG/BMP/DICOM image.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:  # PermissionError, IsADirectoryError, FileNotFoundError, EIO...
        raise ImageReadError(f"unreadable: {type(err).__name__}") from err
    return decode_source_bytes(data, target_size=target_size, max_pixels=max_pixels)


def decode_source_bytes(data: bytes, *, target_size: int = 0,
                        max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, SourceInfo]:
    """Decodes the bytes of one source file (see `read_source`); sha256 is of these bytes.

    Args:
      data: the whole file.
      target_size: 0 (default) decodes at full resolution. A positive value is the side the
        caller resizes to next: a JPEG whose shorter side is at least 4x that is decoded at 1/2
        scale (its shorter side stays >= 2x target_size), so the gray array returned is smaller
        than SourceInfo's width x height. Other formats are always decoded at full size.
      max_pixels: images with more pixels (width x height from the header) are rejected before
        decoding; at most OPENCV_MAX_PIXELS (2^30), OpenCV's own ceiling.
    """
    if not isinstance(target_size, (int, np.integer)) or target_size < 0:
        raise ValueError(
            f"target_size must be an int >= 0 (0 = full resolution). Received: {target_size!r}."
        )
    if not isinstance(max_pixels, (int, np.integer)) or not 1 <= max_pixels <= OPENCV_MAX_PIXELS:
        raise ValueError(
            f"max_pixels must be an int in [1, {OPENCV_MAX_PIXELS}] (OpenCV refuses larger "
            f"images). Received: max_pixels={max_pixels!r}."
        )
    fmt = image_format.sniff_format(data)
    tags: tuple[tuple[str, str], ...] = ()
    if fmt == "DICOM":
        image = dicom.decode_dicom(data, max_pixels=max_pixels)
        gray, width, height, mode, tags = image.gray, image.width, image.height, image.mode, \
            image.tags
    elif fmt == "JPEG":
        gray, width, height, mode = _decode_jpeg(data, target_size, max_pixels)
    else:
        gray, width, height, mode = _decode_png_bmp(data, fmt, max_pixels)
    info = SourceInfo(
        width=int(width),
        height=int(height),
        mode=mode,
        format=fmt,
        num_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        tags=tags,
    )
    return gray, info


def _decode_jpeg(data: bytes, target_size: int, max_pixels: int
                 ) -> tuple[np.ndarray, int, int, str]:
    if not image_format.jpeg_has_eoi_near_end(data):
        # libjpeg decodes a file cut right before its EOI without a word: the marker decides.
        raise ImageReadError("truncated JPEG (no end-of-image marker in its last "
                             f"{image_format.JPEG_EOI_WINDOW >> 20} MiB)")
    width, height, mode = image_format.jpeg_header(data)
    image_format.check_pixel_limit(width, height, max_pixels)
    image_format.check_decode_cost(data, "JPEG")  # decoded bytes, then the scan count
    orientation = image_format.exif_orientation(data, "JPEG")
    flags = cv2.IMREAD_GRAYSCALE
    for factor, reduced in _JPEG_REDUCED:
        if target_size > 0 and min(width, height) >= 2 * factor * target_size:
            flags = reduced
            break
    # OpenCV's own orientation handling is off: the rule is applied below, in one place, so the
    # serving signature can mirror it exactly.
    with _codec_messages() as messages:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8),
                               flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if decoded is None or decoded.size == 0:
        detail = _codec_detail("JPEG", messages[-1]) if messages else "decode failed"
        raise ImageReadError(f"corrupt JPEG ({detail})")
    fatal = [m for m in messages if _JPEG_FATAL.search(m)]
    if fatal:
        kind = "truncated" if _JPEG_TRUNCATED.search(fatal[0]) else "corrupt"
        raise ImageReadError(f"{kind} JPEG ({_codec_detail('JPEG', fatal[0])})")
    if flags == cv2.IMREAD_GRAYSCALE:
        height, width = decoded.shape[:2]  # the decoder is the authority at full scale
    if orientation >= 5:  # a quarter turn: width and height swap
        width, height = height, width
    return apply_orientation(decoded, orientation), width, height, mode


def _decode_png_bmp(data: bytes, fmt: str, max_pixels: int
                    ) -> tuple[np.ndarray, int, int, str]:
    if fmt == "PNG":
        width, height, png_mode = image_format.png_header(data)
        image_format.check_pixel_limit(width, height, max_pixels)
        image_format.check_png_complete(data)
        image_format.check_decode_cost(data, fmt)
    else:
        width, height = image_format.bmp_size(data)
        image_format.check_pixel_limit(width, height, max_pixels)
        image_format.check_bmp_complete(data)
        image_format.check_decode_cost(data, fmt)
        png_mode = None
    with _codec_messages() as messages:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        detail = _codec_detail(fmt, messages[-1]) if messages else "decode failed"
        raise ImageReadError(f"corrupt {fmt} ({detail})")
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    mode = png_mode or _mode_from_decoded(channels, decoded.dtype)
    gray = to_gray8(decoded)
    if fmt == "PNG":
        gray = apply_orientation(gray, image_format.exif_orientation(data, "PNG"))
    height, width = gray.shape[:2]
    return gray, width, height, mode


def failure_reason(err: Exception) -> str:
    """The manifest reason for an unexpected exception while processing one source: our own
    words and the type name only (exception text may quote file contents, i.e. PHI)."""
    if isinstance(err, ImageReadError):
        return err.reason
    if isinstance(err, OSError):
        return f"unreadable: {type(err).__name__}"
    if isinstance(err, MemoryError):
        return "out of memory while decoding: MemoryError"
    return f"decode error: {type(err).__name__} (the file is skipped)"


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turns/flips an image stored with EXIF `orientation` (1..8) upright, as cv2.imread does."""
    turned = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # upside down
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),  # transposed
        6: lambda a: np.rot90(a, -1),  # stored 90 degrees counter-clockwise: turn clockwise
        7: lambda a: np.rot90(a, -1)[::-1],  # transversed
        8: lambda a: np.rot90(a, 1),  # stored 90 degrees clockwise: turn counter-clockwise
    }.get(orientation)
    if turned is None:
        raise ValueError(f"orientation must be 1..8. Received: orientation={orientation!r}.")
    return np.ascontiguousarray(turned(image)) if orientation != 1 else image


def _codec_detail(fmt: str, line: str) -> str:
    """"Corrupt JPEG data: bad Huffman code" -> "libjpeg: bad Huffman code" (same for libpng)."""
    prefix = r"^(corrupt jpeg data|libpng (error|warning)):\s*"
    detail = re.sub(prefix, "", line.strip(), flags=re.I)
    library = {"JPEG": "libjpeg", "PNG": "libpng"}.get(fmt, "decoder")
    return f"{library}: {detail}"


@contextlib.contextmanager
def _codec_messages():
    """Captures what native code writes to fd 2 meanwhile; yields its lines (filled on exit).

    libjpeg reports damaged data only as a warning printed to stderr while OpenCV returns an
    image anyway; libpng prints its errors there too. Codec lines become the rejection reason
    (instead of noise in every worker's log); any other line is written back to stderr.
    fd 2 is process-wide, so the capture is serialised by a lock: decode in parallel with
    processes (as the converter does), not threads.
    """
    with _FD2_LOCK:
        with _capture_fd2() as lines:
            yield lines


_FD2_LOCK = threading.Lock()


@contextlib.contextmanager
def _capture_fd2():
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: decode without the check
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            lines.extend(line for line in text.splitlines() if line.strip())
            foreign = [line for line in lines if not _CODEC_LINE.match(line)]
            if foreign:
                os.write(2, ("\n".join(foreign) + "\n").encode())


def _mode_from_decoded(channels: int, dtype: np.dtype) -> str:
    base = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}ch")
    if dtype == np.uint16:
        return "I;16" if base == "L" else f"{base};16"
    return base


def to_gray8(decoded: np.ndarray) -> np.ndarray:
    """Any OpenCV decode (BGR order, 8/16 bit, with or without alpha) -> HxW uint8 gray."""
    if decoded.ndim == 3 and decoded.shape[2] in (2, 4):
        decoded = decoded[..., :-1]  # drop alpha
    if decoded.ndim == 3 and decoded.shape[2] == 1:
        decoded = decoded[..., 0]
    if decoded.dtype == np.uint8:
        if decoded.ndim == 2:
            return np.ascontiguousarray(decoded)
        if decoded.shape[2] == 3 and _channels_equal(decoded):
            return np.ascontiguousarray(decoded[..., 0])  # gray stored as RGB: exact, no rounding
        return cv2.cvtColor(np.ascontiguousarray(decoded), cv2.COLOR_BGR2GRAY)
    # 16-bit (or other high depth): gray in float, then stretch the actual range to 0..255.
    values = decoded.astype(np.float32)
    if values.ndim == 3:
        red, green, blue = LUMA_BT601  # OpenCV decodes BGR
        values = values[..., 0] * blue + values[..., 1] * green + values[..., 2] * red
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _channels_equal(bgr: np.ndarray) -> bool:
    blue, green, red = bgr[..., 0], bgr[..., 1], bgr[..., 2]
    return bool(np.array_equal(blue, green) and np.array_equal(green, red))
