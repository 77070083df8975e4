"""What a source file is, from its bytes alone: format sniffing and header parsing.

The one source of truth for image magic bytes (the converter's decoder in image_io.py and the
predict command's per-file check in serving/predict.py both use it). Nothing here decodes pixels:
every function reads a few header bytes, so the checks cost microseconds and run before a
decoder is handed a file that would fail (or explode) inside it.

Decisions:
- The format is sniffed from the magic bytes; the extension is not trusted. JPEG, PNG and BMP are
  the encoded formats (the converter and the SavedModel decode them); DICOM (the `DICM` tag after
  the 128-byte preamble) is converted only (records/dicom.py); GIF, TIFF and the rest are named in
  the rejection reason.
- PNG mode comes from the IHDR chunk (colour type + bit depth), so a palette PNG reports "P" and a
  16-bit gray PNG "I;16" even though OpenCV expands them; JPEG mode from its frame header (SOF).
- The pixel count is read from the header (JPEG SOF, PNG IHDR, BMP info header) so an oversized
  image is refused with a plain reason before a decoder allocates it.
- What decoding will cost is bounded from the header too (`check_decode_cost`, shared by the
  converter, `predict` and the web app): the decoded bytes (width x height x samples x bytes per
  sample, times frames for DICOM) against DEFAULT_MAX_DECODED_BYTES, and a progressive JPEG's
  scan count, since libjpeg passes over the whole image once per scan: a 267 KB file of 1,000
  repeated scans at 36 Mpixel took 45-95 s of CPU to decode.
- EXIF orientation (JPEG APP1 "Exif", PNG eXIf chunk) is read here; image_io applies it the way
  cv2.imread does, and serving/export.py mirrors the same parse in TensorFlow ops.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from xray_tfdata import paths

ENCODED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP")
SOURCE_FORMATS: tuple[str, ...] = ENCODED_FORMATS + ("DICOM",)
# File name endings the scanner may hand to the converter; DICOM files often have none at all
# (PACS exports), so `is_source_file` also accepts extension-less files with the DICM preamble.
# ".dicom": VinDr-CXR names its DICOM files so (the format is still read from the bytes).
SOURCE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".dcm", ".dicom")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
BMP_MAGIC = b"BM"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
# Formats recognised only to name them in the rejection reason.
_OTHER_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"PK\x03\x04", "ZIP archive"), (b"%PDF", "PDF"), (b"\x1f\x8b", "gzip archive"),
)
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
# PNG colour type -> mode name at 8 bits (PIL's names); 16-bit variants get ";16" (gray: "I;16").
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
EXIF_ORIENTATION_TAG = 0x0112
# EXIF is looked for in the first MiB of a file, here and in serving/export.py alike (the
# SavedModel walks the header in TensorFlow ops and must bound what it reads).
EXIF_SCAN_BYTES = 1 << 20
EXIF_MAX_ENTRIES = 128  # IFD0 entries searched for the orientation tag (it sorts early: 0x0112)
# How far from the end an EOI marker may sit: editors and cameras append trailers after it. A
# marker that far back cannot fake completeness: FF D9 never occurs inside entropy-coded data
# (0xFF is stuffed), and libjpeg's own check catches a file cut after an embedded thumbnail.
JPEG_EOI_WINDOW = 1 << 20
# Decoded bytes per image (width x height x samples x bytes per sample x frames, from the header):
# 512 MiB is 14x the largest chest detector's 16-bit image (4300 x 4300 x 2 = 37 MB) and holds a
# 200 Mpixel gray image (the --max_pixels default) or a 108 Mpixel phone photo of a film (RGB).
DEFAULT_MAX_DECODED_BYTES = 512 << 20
# libjpeg passes over every block of the image once per scan (measured 1.2 ns per pixel and scan),
# so a few KB of repeated scans cost minutes. Encoders write 6 (gray) to 24 (CMYK) scans with the
# standard scripts; 64 leaves room for scan-optimising encoders. Pixels x scans is capped at
# 2 G (10 scans of a 200 Mpixel image): at most ~2.5 s of decoding per image.
MAX_JPEG_SCANS = 64
MAX_JPEG_SCAN_PIXELS = 2_000_000_000
# A marker inside entropy-coded data: 0xFF not followed by a stuffed 0x00, a restart marker or fill.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class ImageReadError(Exception):
    """A source file that cannot be used; `reason` is a short human reason for the manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file (128-byte preamble, then `DICM`)."""
    end = DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)
    return len(data) >= end and data[DICOM_MAGIC_OFFSET:end] == DICOM_MAGIC


def is_source_file(path: str | Path) -> bool:
    """Whether the scanner should hand `path` to the converter: a known extension, or no
    extension and the DICOM preamble (reads 132 bytes; unreadable files count as candidates so
    the converter reports them instead of skipping them silently)."""
    path = paths.location(path)  # a URL (gs://, ram://) is read through its file system
    if path.suffix.lower() in SOURCE_EXTENSIONS:
        return True
    if path.suffix:
        return False
    try:
        with path.open("rb") as f:
            return is_dicom(f.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)))
    except OSError:
        return True


def sniff_format(data: bytes, allowed: tuple[str, ...] = SOURCE_FORMATS) -> str:
    """The file's format (one of SOURCE_FORMATS) from its magic bytes; `allowed` is only named
    in the reason for an unsupported format.

    Raises:
      ImageReadError: empty, text, or another format (the reason names it when known).
    """
    if not data:
        raise ImageReadError("empty file")
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(BMP_MAGIC) and len(data) >= 26:
        return "BMP"
    if is_dicom(data):
        return "DICOM"
    for magic, name in _OTHER_MAGICS:
        if data.startswith(magic):
            raise ImageReadError(f"unsupported format {name} (allowed: {', '.join(allowed)})")
    if looks_like_text(data[:1024]):
        raise ImageReadError("not an image (looks like text)")
    raise ImageReadError(f"not an image (unknown header {data[:8].hex()})")


def sniff_encoded(data: bytes) -> str:
    """Like `sniff_format`, for inputs that must be an encoded image (the SavedModel's input)."""
    fmt = sniff_format(data, ENCODED_FORMATS)
    if fmt not in ENCODED_FORMATS:
        raise ImageReadError(
            f"unsupported format {fmt} here (allowed: {', '.join(ENCODED_FORMATS)}); convert "
            "DICOM files with `python -m xray_tfdata.build_records`")
    return fmt


def looks_like_text(head: bytes) -> bool:
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


# --- JPEG ----------------------------------------------------------------------------------------

def _jpeg_segments(data: bytes, through_scans: bool = False):
    """Yields (marker, payload start, payload length) of the segments before the first scan, or
    of every segment with `through_scans` (each scan's entropy-coded data skipped to the next
    marker; embedded EXIF thumbnails, inside APP1, are skipped with their segment)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        yield marker, pos + 4, length - 2
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            if not through_scans:
                return
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                return
            pos = found.start()


def jpeg_header(data: bytes) -> tuple[int, int, str]:
    """(width, height, mode) from the first SOF segment (baseline, progressive, lossless...)."""
    width, height, components, _ = jpeg_frame(data)
    return width, height, _JPEG_MODES.get(components, f"{components}ch")


def jpeg_frame(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, components, sample precision in bits) from the first SOF segment."""
    for marker, start, _ in _jpeg_segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if start + 6 > len(data):
                break
            height, width = struct.unpack(">HH", data[start + 1:start + 5])
            if width == 0 or height == 0:
                break
            return width, height, data[start + 5], data[start]
        if marker == 0xDA:  # start of scan before any frame header
            break
    raise ImageReadError("corrupt JPEG (no frame header)")


def jpeg_scan_count(data: bytes) -> int:
    """The number of scans (SOS markers) in a JPEG, walking segment lengths and skipping each
    scan's entropy-coded data (embedded EXIF thumbnails, inside APP1, are not counted)."""
    return sum(marker == 0xDA for marker, _, _ in _jpeg_segments(data, through_scans=True))


def jpeg_has_eoi_near_end(data: bytes) -> bool:
    """An end-of-image marker within the last JPEG_EOI_WINDOW bytes (trailers may follow it)."""
    return data.rfind(b"\xff\xd9", max(0, len(data) - JPEG_EOI_WINDOW)) >= 0


# --- PNG -----------------------------------------------------------------------------------------

def _png_chunks(data: bytes):
    """Yields (type, payload start, length) of each chunk; truncation raises ImageReadError."""
    pos = 8
    while True:
        if pos + 8 > len(data):
            raise ImageReadError("truncated PNG (no IEND chunk)")
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunk_type = data[pos + 4:pos + 8]
        if pos + 12 + length > len(data):  # length, type, data, crc
            raise ImageReadError("truncated PNG (no IEND chunk)")
        yield chunk_type, pos + 8, length
        if chunk_type == b"IEND":
            return
        pos += 12 + length


def png_header(data: bytes) -> tuple[int, int, str]:
    """(width, height, mode) from IHDR. Does not walk the chunks: see `check_png_complete`."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageReadError("corrupt PNG (no IHDR chunk)")
    width, height = struct.unpack(">II", data[16:24])
    bit_depth, colour_type = data[24], data[25]
    if colour_type not in _PNG_MODES:
        raise ImageReadError(f"corrupt PNG (colour type {colour_type})")
    base = _PNG_MODES[colour_type]
    if bit_depth == 16:
        mode = "I;16" if base == "L" else f"{base};16"
    elif bit_depth == 1 and base == "L":
        mode = "1"
    else:
        mode = base
    return width, height, mode


def check_png_complete(data: bytes) -> None:
    """Walks the PNG chunks (cheap: lengths only); a missing IEND raises ImageReadError."""
    for _ in _png_chunks(data):
        pass


# --- BMP -----------------------------------------------------------------------------------------

def bmp_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the BITMAPINFOHEADER (or the old 12-byte core header)."""
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means rows stored top-down


def check_bmp_complete(data: bytes) -> None:
    # bfSize (bytes 2..6) is the whole file's size; 0 is allowed by some writers.
    (declared,) = struct.unpack("<I", data[2:6])
    if declared and len(data) < declared:
        raise ImageReadError(f"truncated BMP ({len(data)} of {declared} bytes)")


# --- size limit and EXIF -------------------------------------------------------------------------

def header_size(data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) as stored, from the header of an encoded format."""
    if fmt == "JPEG":
        return jpeg_header(data)[:2]
    if fmt == "PNG":
        return png_header(data)[:2]
    return bmp_size(data)


def format_pixels(count: int) -> str:
    """1_600_000_000 -> "1.6 Gpixel" (SI prefixes, as camera makers count)."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.1f} {prefix}pixel"
    return f"{count} pixel"


def check_pixel_limit(width: int, height: int, max_pixels: int) -> None:
    """Refuses an image over `max_pixels` (0 = no limit) with a plain reason, before decoding."""
    if max_pixels and width * height > max_pixels:
        raise ImageReadError(
            f"{width}x{height} = {format_pixels(width * height)} is over the --max_pixels limit "
            f"of {format_pixels(max_pixels)} ({max_pixels} pixels); raise --max_pixels if the "
            "file is genuine")


# --- decode cost --------------------------------------------------------------------------------

# Samples per pixel the decoders produce for each PNG colour type (a palette expands to BGR).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def decoded_bytes(width: int, height: int, samples: int = 1, bits_per_sample: int = 8,
                  frames: int = 1) -> int:
    """The bytes a decoder allocates for an image, from header facts alone:
    width x height x samples x bytes per sample (bits rounded up to whole bytes) x frames."""
    return width * height * samples * ((bits_per_sample + 7) // 8) * frames


def estimate_decoded_bytes(data: bytes) -> int:
    """`decoded_bytes` of any source file's bytes (JPEG, PNG, BMP from their headers; DICOM
    through pydicom, header only). What a caller sums to bound several images at once.

    Raises:
      ImageReadError: not an image, or a header too damaged to say.
    """
    fmt = sniff_format(data)
    if fmt == "DICOM":
        from xray_tfdata.records import dicom  # noqa: PLC0415 - pydicom only for DICOM

        return dicom.estimate_decoded_bytes(data)
    return _encoded_decoded_bytes(data, fmt)


def _encoded_decoded_bytes(data: bytes, fmt: str) -> int:
    try:
        if fmt == "JPEG":
            width, height, components, precision = jpeg_frame(data)
            return decoded_bytes(width, height, components, precision)
        if fmt == "PNG":
            width, height, _ = png_header(data)
            return decoded_bytes(width, height, _PNG_SAMPLES[data[25]], max(8, data[24]))
        width, height = bmp_size(data)
        (header,) = struct.unpack("<I", data[14:18])
        bit_count = struct.unpack("<H", data[24:26] if header == 12 else data[28:30])[0]
        return decoded_bytes(width, height, 4 if bit_count == 32 else 3)
    except struct.error:
        raise ImageReadError(f"corrupt {fmt} (header cut short)") from None


def format_bytes(count: int) -> str:
    """536870912 -> "512.0 MiB"."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.1f} {unit}"
    return f"{count} bytes"


def check_decoded_bytes(count: int, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> None:
    """Refuses an image whose decode would allocate more than `max_decoded_bytes`."""
    if count > max_decoded_bytes:
        raise ImageReadError(
            f"decoding needs {format_bytes(count)}, over the limit of "
            f"{format_bytes(max_decoded_bytes)} per image (refused before decoding)")


def check_jpeg_scans(data: bytes, width: int, height: int) -> None:
    """Refuses a JPEG whose scans would cost more than MAX_JPEG_SCANS / MAX_JPEG_SCAN_PIXELS."""
    scans = jpeg_scan_count(data)
    if scans > MAX_JPEG_SCANS or scans * width * height > MAX_JPEG_SCAN_PIXELS:
        raise ImageReadError(
            f"JPEG with {scans} scans refused before decoding: decoding costs one pass over the "
            f"image per scan, and {scans} x {format_pixels(width * height)} is over the limit "
            f"({MAX_JPEG_SCANS} scans, {format_pixels(MAX_JPEG_SCAN_PIXELS)} x scans)")


def check_decode_cost(data: bytes, fmt: str,
                      max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> None:
    """The header-only cost checks every decoder of an encoded format runs first (the converter,
    `predict`, the web app): decoded bytes, then a JPEG's scan count. After the pixel limit."""
    check_decoded_bytes(_encoded_decoded_bytes(data, fmt), max_decoded_bytes)
    if fmt == "JPEG":
        width, height, _, _ = jpeg_frame(data)
        check_jpeg_scans(data, width, height)


def exif_orientation(data: bytes, fmt: str) -> int:
    """The EXIF orientation (1..8) of a JPEG (APP1 "Exif") or PNG (eXIf chunk); 1 if absent.

    Only the first EXIF_SCAN_BYTES are read; an EXIF block starting later counts as absent.
    """
    data = data[:EXIF_SCAN_BYTES]
    tiff = b""
    if fmt == "JPEG":
        for marker, start, length in _jpeg_segments(data):
            if marker == 0xE1 and data[start:start + 6] == b"Exif\x00\x00":
                tiff = data[start + 6:start + length]
                break
    elif fmt == "PNG":
        try:
            for chunk_type, start, length in _png_chunks(data):
                if chunk_type == b"eXIf":
                    tiff = data[start:start + length]
                    break
                if chunk_type == b"IDAT":  # eXIf must come before the image data
                    break
        except ImageReadError:
            return 1  # truncation is reported by the decode step
    return _tiff_orientation(tiff)


def _tiff_orientation(tiff: bytes) -> int:
    """Orientation tag of IFD0 of an EXIF (TIFF-structured) block; 1 when missing or malformed."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    for i in range(min(count, EXIF_MAX_ENTRIES)):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            break
        tag, kind = struct.unpack(order + "HH", tiff[entry:entry + 4])
        if tag == EXIF_ORIENTATION_TAG and kind == 3:  # SHORT
            (value,) = struct.unpack(order + "H", tiff[entry + 8:entry + 10])
            return value if 1 <= value <= 8 else 1
    return 1
