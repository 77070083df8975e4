"""Source images in, uniform 8-bit grayscale out: the converter's decode step.

Runs inside the converter's worker processes, so it imports only numpy and OpenCV (never
TensorFlow). Every source file, whatever its format and mode, becomes one `HxW uint8` gray array
plus a `SourceInfo` describing the original (kept in each tf.Example for the shortcut probe).
What the file is (format, mode, size) comes from its header (image_format.py); the resize and
encode that follow live in resize.py.

Decisions:
- BMP mode comes from the decoded channel count (the header is not always honest about it).
  16-bit sources are scaled to 8 bits by their actual min..max range, so a 12-bit X-ray stored
  in 16 bits is not truncated to its top (nearly black) bits.
- Alpha is dropped (not composited), as PIL's convert("L") and TF's decode_png(channels=3) do,
  so the serving path can mirror it. EXIF orientation is ignored, as tf.io.decode_image does.
- JPEGs are decoded straight to gray by libjpeg (the luma channel Y = 0.299R + 0.587G + 0.114B,
  within 1 level of cv2.COLOR_BGR2GRAY); their mode and original size come from the SOF header.
  With `target_size`, a JPEG at least 4x larger than needed is decoded at 1/2 scale by
  libjpeg's DCT scaling (so still >= 2x the target side): about 1.7x faster, and after the area
  resize within 1 gray level on average (max 4) of a full decode. 1/4 scale is not used: it was
  no faster (entropy decoding dominates) and up to 9 levels off on fine detail.
- Truncation is detected here, not left to OpenCV: a JPEG must end with the EOI marker (after
  trailing zero padding) and libjpeg must not report damaged scan data (its warnings go straight
  to the process's stderr, so they are captured around the decode; harmless ones such as
  "extraneous bytes before marker" are tolerated), a PNG must have a well-formed chunk sequence
  ending in IEND, a BMP must be as long as its header says.
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

from xray_tfdata.records import image_format
from xray_tfdata.records.image_format import SOURCE_FORMATS, ImageReadError
# The resize/encode half of the old image_io, re-exported so sources.py, convert.py and
# build_records.py keep working unchanged; new code imports records.resize directly.
from xray_tfdata.records.resize import (  # noqa: F401
    ENCODE_FORMATS,
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

# DCT-domain reduced decode (see decode_source_bytes' target_size and the module docstring).
_JPEG_REDUCED = ((2, cv2.IMREAD_REDUCED_GRAYSCALE_2),)
# libjpeg warnings that mean the pixels are wrong (grey fill or garbage), not merely odd framing.
_JPEG_FATAL = re.compile(
    r"premature end|huffman|invalid|bogus|corrupt jpeg data: (?!\d+ extraneous bytes)", re.I
)
_CODEC_LINE = re.compile(
    r"^(corrupt jpeg data|premature end|invalid|bogus|unsupported|warning|libpng)", re.I
)


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What the original file was (before gray conversion and resizing)."""

    width: int
    height: int
    mode: str  # "L", "LA", "RGB", "RGBA", "P", "I;16", "RGB;16", "RGBA;16", "LA;16", "1"
    format: str  # one of image_format.SOURCE_FORMATS, sniffed from the bytes
    num_bytes: int
    sha256: str


def read_source(path: str | Path, *, target_size: int = 0) -> tuple[np.ndarray, SourceInfo]:
    """Reads and decodes one source file into an `HxW uint8` gray array and its SourceInfo.

    `target_size` (optional) is the side the caller will resize to; see `decode_source_bytes`.

    Raises:
      ImageReadError: the file is unreadable, empty, truncated, corrupt or not a JPEG/PNG/BMP.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:  # PermissionError, IsADirectoryError, FileNotFoundError, EIO...
        raise ImageReadError(f"unreadable: {type(err).__name__}") from err
    return decode_source_bytes(data, target_size=target_size)


def decode_source_bytes(data: bytes, *, target_size: int = 0) -> tuple[np.ndarray, SourceInfo]:
    """Decodes the bytes of one source file (see `read_source`); sha256 is of these bytes.

    Args:
      data: the whole file.
      target_size: 0 (default) decodes at full resolution. A positive value is the side the
        caller resizes to next: a JPEG whose shorter side is at least 4x that is decoded at 1/2
        scale (its shorter side stays >= 2x target_size), so the gray array returned is smaller
        than SourceInfo's width x height. Other formats are always decoded at full size.
    """
    if not isinstance(target_size, (int, np.integer)) or target_size < 0:
        raise ValueError(
            f"target_size must be an int >= 0 (0 = full resolution). Received: {target_size!r}."
        )
    fmt = image_format.sniff_format(data)
    if fmt == "DICOM":
        raise ImageReadError("unsupported format DICOM (allowed: JPEG, PNG, BMP)")
    if fmt == "JPEG":
        _check_jpeg_complete(data)
        width, height, mode = image_format.jpeg_header(data)
        flags = cv2.IMREAD_GRAYSCALE
        for factor, reduced in _JPEG_REDUCED:
            if target_size > 0 and min(width, height) >= 2 * factor * target_size:
                flags = reduced
                break
        # EXIF orientation is ignored, as with IMREAD_UNCHANGED and tf.io.decode_jpeg.
        decoded = _imdecode(data, flags | cv2.IMREAD_IGNORE_ORIENTATION, fmt)
        if flags == cv2.IMREAD_GRAYSCALE:
            height, width = decoded.shape[:2]  # the decoder is the authority at full scale
    else:
        if fmt == "PNG":
            png_mode = image_format.png_header(data)[2]
            image_format.check_png_complete(data)
        else:
            image_format.check_bmp_complete(data)
            png_mode = None
        decoded = _imdecode(data, cv2.IMREAD_UNCHANGED, fmt)
        height, width = decoded.shape[:2]
        channels = 1 if decoded.ndim == 2 else decoded.shape[2]
        mode = png_mode or _mode_from_decoded(channels, decoded.dtype)
    info = SourceInfo(
        width=int(width),
        height=int(height),
        mode=mode,
        format=fmt,
        num_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return to_gray8(decoded), info


def _check_jpeg_complete(data: bytes) -> None:
    # OpenCV may fill the missing part of a truncated JPEG with grey and only warn on stderr, so
    # the end-of-image marker is checked here. Some writers pad files with zeros after EOI.
    tail = data[-4096:].rstrip(b"\x00") or data.rstrip(b"\x00")  # avoid copying big files
    if not tail.endswith(b"\xff\xd9"):
        raise ImageReadError("truncated JPEG (no EOI marker at the end)")


def _imdecode(data: bytes, flags: int, fmt: str) -> np.ndarray:
    with _codec_messages() as messages:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if decoded is None or decoded.size == 0:
        detail = _codec_detail(fmt, messages[-1]) if messages else "decode failed"
        raise ImageReadError(f"corrupt {fmt} ({detail})")
    fatal = [m for m in messages if _JPEG_FATAL.search(m)] if fmt == "JPEG" else []
    if fatal:
        raise ImageReadError(f"corrupt JPEG ({_codec_detail(fmt, fatal[0])})")
    return decoded


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
        values = values[..., 0] * 0.114 + values[..., 1] * 0.587 + values[..., 2] * 0.299
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _channels_equal(bgr: np.ndarray) -> bool:
    blue, green, red = bgr[..., 0], bgr[..., 1], bgr[..., 2]
    return bool(np.array_equal(blue, green) and np.array_equal(green, red))
