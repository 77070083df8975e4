"""Source images in, uniform 8-bit grayscale out: decode, resize, encode.

Runs inside the converter's worker processes, so it imports only numpy and OpenCV (never
TensorFlow). Every source file, whatever its format and mode, becomes one `HxW uint8` gray array
plus a `SourceInfo` describing the original (kept in each tf.Example for the shortcut probe).

Decisions (documented in docs/imageops.md):
- The format is sniffed from the magic bytes; the extension is not trusted.
- PNG mode comes from the IHDR chunk (colour type + bit depth), so a palette PNG reports "P" and a
  16-bit gray PNG "I;16" even though OpenCV expands them; BMP mode comes from the decoded
  channel count, JPEG mode from its frame header ("L", "RGB", "CMYK"). 16-bit sources are
  scaled to 8 bits by their actual min..max range.
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
import struct
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

# Decoding failures are reported through ImageReadError (and land in the manifest); OpenCV's own
# stderr warnings would only duplicate them once per bad file in every worker.
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # older OpenCV builds without the logging module
    pass

RESIZE_MODES: tuple[str, ...] = ("stretch", "pad")
ENCODE_FORMATS: tuple[str, ...] = ("jpeg", "png", "raw")
SOURCE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_BMP_MAGIC = b"BM"
# Formats we recognise only to name them in the rejection reason.
_OTHER_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"PK\x03\x04", "ZIP archive"), (b"%PDF", "PDF"), (b"\x1f\x8b", "gzip archive"),
)
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
# DCT-domain reduced decode (see decode_source_bytes' target_size and the module docstring).
_JPEG_REDUCED = ((2, cv2.IMREAD_REDUCED_GRAYSCALE_2),)
# libjpeg warnings that mean the pixels are wrong (grey fill or garbage), not merely odd framing.
_JPEG_FATAL = re.compile(
    r"premature end|huffman|invalid|bogus|corrupt jpeg data: (?!\d+ extraneous bytes)", re.I
)
_CODEC_LINE = re.compile(
    r"^(corrupt jpeg data|premature end|invalid|bogus|unsupported|warning|libpng)", re.I
)
# PNG colour type -> mode name at 8 bits (PIL's names); 16-bit variants get ";16" (gray: "I;16").
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}


class ImageReadError(Exception):
    """A source file that cannot be used; `reason` is a short human reason for the manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What the original file was (before gray conversion and resizing)."""

    width: int
    height: int
    mode: str  # "L", "LA", "RGB", "RGBA", "P", "I;16", "RGB;16", "RGBA;16", "LA;16", "1"
    format: str  # "JPEG", "PNG" or "BMP", sniffed from the bytes
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
    if not data:
        raise ImageReadError("empty file")
    fmt = _sniff_format(data)
    if fmt == "JPEG":
        _check_jpeg_complete(data)
        width, height, components = _jpeg_header(data)
        mode = _JPEG_MODES.get(components, f"{components}ch")
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
            png_mode = _check_png_and_mode(data)
        else:
            _check_bmp_complete(data)
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
    return _to_gray8(decoded), info


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


def _sniff_format(data: bytes) -> str:
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_BMP_MAGIC) and len(data) >= 26:
        return "BMP"
    for magic, name in _OTHER_MAGICS:
        if data.startswith(magic):
            raise ImageReadError(f"unsupported format {name} (allowed: JPEG, PNG, BMP)")
    if len(data) >= 132 and data[128:132] == b"DICM":
        raise ImageReadError("unsupported format DICOM (allowed: JPEG, PNG, BMP)")
    if _looks_like_text(data[:1024]):
        raise ImageReadError("not an image (looks like text)")
    raise ImageReadError(f"not an image (unknown header {data[:8].hex()})")


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the 1024-byte boundary.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(len(text), 1)


def _check_jpeg_complete(data: bytes) -> None:
    # OpenCV may fill the missing part of a truncated JPEG with grey and only warn on stderr, so
    # the end-of-image marker is checked here. Some writers pad files with zeros after EOI.
    tail = data[-4096:].rstrip(b"\x00") or data.rstrip(b"\x00")  # avoid copying big files
    if not tail.endswith(b"\xff\xd9"):
        raise ImageReadError("truncated JPEG (no EOI marker at the end)")


def _jpeg_header(data: bytes) -> tuple[int, int, int]:
    """(width, height, components) from the first SOF segment (baseline, progressive, ...)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 10 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            if width == 0 or height == 0:
                break
            return width, height, data[pos + 9]
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise ImageReadError("corrupt JPEG (no frame header)")


def _check_png_and_mode(data: bytes) -> str:
    """Walks the PNG chunks (cheap: lengths only) and returns the mode from IHDR."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageReadError("corrupt PNG (no IHDR chunk)")
    bit_depth, colour_type = data[24], data[25]
    if colour_type not in _PNG_MODES:
        raise ImageReadError(f"corrupt PNG (colour type {colour_type})")
    pos = 8
    while True:
        if pos + 8 > len(data):
            raise ImageReadError("truncated PNG (no IEND chunk)")
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunk_type = data[pos + 4:pos + 8]
        pos += 12 + length  # length, type, data, crc
        if pos > len(data):
            raise ImageReadError("truncated PNG (no IEND chunk)")
        if chunk_type == b"IEND":
            break
    base = _PNG_MODES[colour_type]
    if bit_depth == 16:
        return "I;16" if base == "L" else f"{base};16"
    if bit_depth == 1 and base == "L":
        return "1"
    return base


def _check_bmp_complete(data: bytes) -> None:
    # bfSize (bytes 2..6) is the whole file's size; 0 is allowed by some writers.
    (declared,) = struct.unpack("<I", data[2:6])
    if declared and len(data) < declared:
        raise ImageReadError(f"truncated BMP ({len(data)} of {declared} bytes)")


def _mode_from_decoded(channels: int, dtype: np.dtype) -> str:
    base = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}ch")
    if dtype == np.uint16:
        return "I;16" if base == "L" else f"{base};16"
    return base


def _to_gray8(decoded: np.ndarray) -> np.ndarray:
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
    # 16-bit (or other high depth): gray in float, then stretch the actual range to 0..255 so
    # a 12-bit X-ray stored in 16 bits is not truncated to its top (nearly black) bits.
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


def to_channels(gray: np.ndarray, channels: int) -> np.ndarray:
    """`HxW` (or `HxWx1`) uint8 gray -> `HxWxC` with C = 1, or 3 identical channels."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels}.")
    if gray.ndim == 3 and gray.shape[2] == 1:
        gray = gray[..., 0]
    if gray.ndim != 2:
        raise ValueError(f"to_channels expects an HxW gray image. Received: shape={gray.shape}.")
    if channels == 1:
        return gray[..., np.newaxis]
    return np.repeat(gray[..., np.newaxis], 3, axis=2)


def resize(image: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """Resizes to `size x size`; keeps a channel axis if the input has one.

    "stretch" scales each side independently (the seed's behaviour); "pad" keeps the aspect ratio
    and centres the image on black. Shrinking uses INTER_AREA (moire-free decimation); pure
    enlargement (tiny sources) uses INTER_LINEAR, since area averaging is undefined there.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}. Received: mode={mode!r}.")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int. Received: size={size!r}.")
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"resize expects an HxW or HxWxC image. Received: shape={image.shape}.")
    height, width = image.shape[:2]
    if mode == "stretch":
        return _resize_to(image, size, size)
    scale = size / max(height, width)
    new_h = min(size, max(1, int(round(height * scale))))
    new_w = min(size, max(1, int(round(width * scale))))
    inner = _resize_to(image, new_h, new_w)
    out = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = inner
    return out


def _resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image.copy()
    shrinking = height < src_h or width < src_w
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    if image.ndim == 3 and out.ndim == 2:  # OpenCV drops a trailing channel axis of 1
        out = out[..., np.newaxis]
    return out


def encode(image: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
    """Encodes an `HxWxC` uint8 image (C = 1 or 3, RGB order) as jpeg, png or raw bytes.

    "raw" is the C-order pixel bytes (tf.io.decode_raw + reshape to [H, W, C] reads it back).
    """
    if image_format not in ENCODE_FORMATS:
        raise ValueError(
            f"image_format must be one of {ENCODE_FORMATS}. "
            f"Received: image_format={image_format!r}."
        )
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(
            "encode expects an HxWxC uint8 image with C in (1, 3). "
            f"Received: shape={image.shape}, dtype={image.dtype}."
        )
    if image_format == "raw":
        return np.ascontiguousarray(image).tobytes()
    # OpenCV encoders expect BGR; flip so an RGB input is stored as RGB.
    bgr = image if image.shape[2] == 1 else image[..., ::-1]
    bgr = np.ascontiguousarray(bgr)
    if image_format == "jpeg":
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(
                f"jpeg_quality must be in [1, 100]. Received: jpeg_quality={jpeg_quality}."
            )
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {image.shape} image as {image_format}.")
    return buf.tobytes()
