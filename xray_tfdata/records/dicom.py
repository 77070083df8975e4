"""DICOM sources: one X-ray's pixels to 8-bit gray as a viewer shows them, technical tags, no PHI.

Needs the `[dicom]` extra (`pip install -e '.[dicom]'`: pydicom, and pylibjpeg with its libjpeg,
openjpeg and rle plugins for compressed transfer syntaxes). Without it, a DICOM source is
rejected with a reason naming the extra; nothing else in the package needs pydicom. Runs inside
the converter's worker processes: pydicom, numpy and OpenCV only, never TensorFlow.

Decisions:
- Pixels go through the standard display chain (DICOM PS3.3 C.11, pydicom.pixels): the Modality
  LUT (RescaleSlope/Intercept or a Modality LUT Sequence), then the VOI LUT Sequence or, failing
  that, the first WindowCenter/WindowWidth. The result is scaled to 0..255 over the output range
  of that chain: the window's output range, the VOI LUT's bit depth, or, without any VOI, the
  range BitsStored allows (mapped through the rescale). A 12-bit image in 16-bit words therefore
  uses the whole 8-bit range, and two images of one detector keep their relative brightness
  (unlike a per-image min..max stretch).
- MONOCHROME1 (0 = white) is inverted after the VOI step, so lungs are dark, as on any displayed
  X-ray and as in the Kaggle PNGs. RGB / YBR sources (secondary captures) go to BT.601 luma.
- One image per file: multi-frame files (tomosynthesis, cine), files without pixel data
  (structured reports, presentation states, key-object notes) and truncated files are rejected
  with a reason, never guessed at.
- No protected health information leaves this module: only the allow-listed TECHNICAL_TAGS are
  returned, rejection reasons are built from our own words plus exception type names (never
  pydicom's messages, which may quote element values), and pydicom's warnings and log records
  (which can quote a malformed date or name) are silenced while a file is read. A tag's value
  enters a reason only when it is one of DICOM's own defined terms or UIDs (a NumberOfFrames of
  `Zyxwa^Qorbel` is "not a whole number", never quoted); any exception not foreseen here becomes
  a "corrupt DICOM" reason with its type name, so one malformed file never stops a build.
- Limits read from the header before pixels are decoded: max_pixels, the decoded bytes (rows x
  columns x samples x bytes allocated x frames, image_format.DEFAULT_MAX_DECODED_BYTES), and
  BitsAllocated 8, 16 or 32, a LUT's bit depth 1..16.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import io
import logging
import warnings
from typing import Any

import numpy as np

from xray_tfdata.records import image_format
from xray_tfdata.records.image_format import ImageReadError, check_pixel_limit
from xray_tfdata.records.resize import LUMA_BT601

# Technical tags copied into each record (features.py) and fed to the shortcut probe. Device and
# acquisition facts, never patient, study or institution data.
TECHNICAL_TAGS: tuple[str, ...] = (
    "Modality", "ViewPosition", "PhotometricInterpretation", "BitsStored", "Manufacturer",
    "PixelSpacing",
)
EXTRA_HINT = "pip install -e '.[dicom]'"
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
# Other defined terms of PhotometricInterpretation and Modality: only these are quoted in reasons.
_OTHER_PHOTOMETRIC = ("PALETTE COLOR", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "HSV", "ARGB",
                      "CMYK")
_MODALITIES = ("AU", "CR", "CT", "DOC", "DX", "ECG", "KO", "MG", "MR", "NM", "OT", "PR", "PT",
               "REG", "RF", "RTDOSE", "RTPLAN", "RTSTRUCT", "SEG", "SM", "SR", "US", "XA")
_BITS_ALLOCATED = (8, 16, 32)


@dataclasses.dataclass(frozen=True)
class DicomImage:
    """One decoded DICOM image: `HxW uint8` gray as displayed, and what image_io records."""

    gray: np.ndarray
    width: int
    height: int
    mode: str  # the PhotometricInterpretation
    tags: tuple[tuple[str, str], ...]  # (name, value) for each TECHNICAL_TAGS entry present


def decode_dicom(data: bytes, *, max_pixels: int,
                 max_decoded_bytes: int = image_format.DEFAULT_MAX_DECODED_BYTES) -> DicomImage:
    """Reads one DICOM Part 10 file (the whole file's bytes) into a DicomImage.

    Raises:
      ImageReadError: pydicom missing, unparsable, truncated, no pixel data, multi-frame,
        compressed without an installed decoder, unsupported photometric interpretation, more
        than `max_pixels` pixels or `max_decoded_bytes` decoded, or malformed in any other way.
    """
    pydicom = _import_pydicom()
    with _quiet(pydicom), _reasons_only():
        return _decode(pydicom, data, max_pixels, max_decoded_bytes)


def estimate_decoded_bytes(data: bytes) -> int:
    """image_format.decoded_bytes of a DICOM file, from its header (pixels are not read).

    Raises:
      ImageReadError: pydicom missing, or a header without usable Rows, Columns, BitsAllocated.
    """
    pydicom = _import_pydicom()
    with _quiet(pydicom), _reasons_only():
        ds = _read(pydicom, data, stop_before_pixels=True)
        for name in ("Rows", "Columns", "BitsAllocated"):
            if ds.get(name) in (None, ""):
                raise ImageReadError(f"corrupt DICOM (no {name})")
        return _decoded_bytes(ds)


@contextlib.contextmanager
def _reasons_only():
    """Any exception not foreseen below becomes an ImageReadError naming only its type: its text
    may quote a tag's value (PHI), and one malformed file must never stop a build or a server."""
    try:
        yield
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001 - the per-file boundary of every DICOM read
        raise ImageReadError(
            f"corrupt DICOM (malformed attributes: {type(err).__name__})") from None


def _read(pydicom, data: bytes, stop_before_pixels: bool = False) -> Any:
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except Exception as err:  # noqa: BLE001 - InvalidDicomError, EOFError, struct.error...
        raise ImageReadError(f"corrupt DICOM (cannot parse: {type(err).__name__})") from None


def _decode(pydicom, data: bytes, max_pixels: int, max_decoded_bytes: int) -> DicomImage:
    ds = _read(pydicom, data)
    _check_image(ds)
    check_pixel_limit(_int(ds, "Columns"), _int(ds, "Rows"), max_pixels)
    image_format.check_decoded_bytes(_decoded_bytes(ds), max_decoded_bytes)
    _check_decoder(ds)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - each decoder plugin raises its own types
        raise ImageReadError(
            f"corrupt DICOM (pixel data cannot be decoded: {type(err).__name__})") from None
    gray = _to_gray8(pixels, ds)
    return DicomImage(gray=gray, width=int(ds.Columns), height=int(ds.Rows),
                      mode=str(ds.PhotometricInterpretation), tags=technical_tags(ds))


def technical_tags(ds: Any) -> tuple[tuple[str, str], ...]:
    """The allow-listed tags present in `ds`, as strings (multi-values joined by a backslash,
    DICOM's own separator: PixelSpacing "0.139\\0.139" is row\\column spacing in mm)."""
    out = []
    for name in TECHNICAL_TAGS:
        value = ds.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, collections.abc.Sequence) and not isinstance(value, str):
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
        out.append((name, text.strip()))
    return tuple(out)


def _import_pydicom():
    try:
        import pydicom  # noqa: PLC0415 - optional extra
        import pydicom.pixels  # noqa: F401, PLC0415
    except ImportError:
        raise ImageReadError(f"DICOM needs the [dicom] extra: {EXTRA_HINT}") from None
    return pydicom


@contextlib.contextmanager
def _quiet(pydicom):
    """No pydicom warning or log record while a file is read: they can quote element values."""
    logger = logging.getLogger("pydicom")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    config = pydicom.config.settings
    saved_mode = config.reading_validation_mode
    config.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.reading_validation_mode = saved_mode
        logger.setLevel(level)
        logger.propagate = propagate


def _int(ds: Any, name: str, default: int | None = None) -> int:
    """An integer attribute, or an ImageReadError naming the attribute (never its value)."""
    value = ds.get(name, default)
    if value in (None, "") and default is not None:
        value = default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ImageReadError(f"corrupt DICOM ({name} is not a whole number)") from None


def _decoded_bytes(ds: Any) -> int:
    return image_format.decoded_bytes(
        _int(ds, "Columns"), _int(ds, "Rows"), _int(ds, "SamplesPerPixel", 1),
        _int(ds, "BitsAllocated"), max(1, _int(ds, "NumberOfFrames", 1)))


def _uid_name(uid: Any, fallback: str) -> str:
    """A UID's registered name (pydicom's dictionary), else `fallback`: an unregistered value
    could be any text."""
    name = getattr(uid, "name", "")
    return name if name and name != str(uid) else fallback


def _check_image(ds: Any) -> None:
    """One single-frame image with usable pixel attributes, or an ImageReadError saying why not."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise ImageReadError("corrupt DICOM (no transfer syntax in the file meta information)")
    if "PixelData" not in ds:
        uid = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        sop = _uid_name(uid, "unknown SOP class")
        if len(ds) == 0:
            raise ImageReadError("truncated DICOM (the file ends inside its header)")
        # pydicom stops quietly at the end of a cut file, so a file of an image SOP class (or
        # with image attributes) that has no pixels was cut short, not a report.
        if "Rows" in ds or "Columns" in ds or "Image Storage" in sop:
            raise ImageReadError(f"truncated DICOM ({sop} without pixel data: the file ends "
                                 "before its pixels)")
        kind = str(ds.get("Modality", ""))
        kind = kind if kind in _MODALITIES else "unknown modality"
        raise ImageReadError(f"DICOM without pixel data ({kind}, {sop}): a report or "
                             "presentation state, not an image")
    for name in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation"):
        if ds.get(name) in (None, ""):
            raise ImageReadError(f"corrupt DICOM (no {name})")
    frames = _int(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise ImageReadError(f"multi-frame DICOM ({frames} frames): only single-image files "
                             "are converted")
    allocated, stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    if allocated not in _BITS_ALLOCATED:
        raise ImageReadError(f"unsupported DICOM BitsAllocated {allocated} (allowed: "
                             f"{', '.join(map(str, _BITS_ALLOCATED))})")
    if not 1 <= stored <= allocated:
        raise ImageReadError(f"corrupt DICOM (BitsStored {stored} outside 1..BitsAllocated "
                             f"{allocated})")
    photometric = str(ds.PhotometricInterpretation)
    if photometric not in _MONOCHROME + _COLOUR:
        named = photometric if photometric in _OTHER_PHOTOMETRIC else "(not a defined term)"
        raise ImageReadError(f"unsupported DICOM PhotometricInterpretation {named} "
                             f"(allowed: {', '.join(_MONOCHROME + ('RGB', 'YBR_*'))})")
    transfer = ds.file_meta.get("TransferSyntaxUID")
    if transfer is not None and not transfer.is_compressed:
        expected = (_int(ds, "Rows") * _int(ds, "Columns") * _int(ds, "SamplesPerPixel", 1)
                    * allocated + 7) // 8
        if len(ds.PixelData) < expected:
            raise ImageReadError(f"truncated DICOM (pixel data has {len(ds.PixelData)} of "
                                 f"{expected} bytes)")


def _check_decoder(ds: Any) -> None:
    """A compressed transfer syntax needs a decoder plugin (pylibjpeg, from the extra)."""
    from pydicom.pixels import get_decoder  # noqa: PLC0415

    transfer = ds.file_meta.get("TransferSyntaxUID")
    if transfer is None or not transfer.is_compressed:
        return
    try:
        decoder = get_decoder(transfer)
    except NotImplementedError:
        raise ImageReadError("unsupported DICOM transfer syntax "
                             f"{_uid_name(transfer, '(unregistered UID)')}") from None
    if not decoder.is_available:
        raise ImageReadError(
            f"compressed DICOM ({_uid_name(transfer, 'unregistered UID')}) needs a decoder: {EXTRA_HINT} "
            "(installs pylibjpeg with its libjpeg, openjpeg and rle plugins)")


def _to_gray8(pixels: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values -> displayed 8-bit gray (module docstring: LUTs, range, MONOCHROME1)."""
    photometric = str(ds.PhotometricInterpretation)
    if photometric not in _MONOCHROME:
        # pydicom returns YBR as RGB by default; colour images carry no VOI, so scale by depth.
        values = pixels.astype(np.float64)
        if values.ndim == 3:
            values = values @ np.array(LUMA_BT601)
        return _scale(values, 0.0, float(2 ** int(ds.BitsStored) - 1))
    if pixels.dtype.kind in "iu":
        # The display chain is a function of the stored value alone, so it is evaluated once
        # per distinct value (at most 2^17 here) and applied as one table lookup: same bytes,
        # measured 46 -> 8 ms on a 1536x1536 12-bit windowed image (pydicom's float64 window
        # over every pixel makes several full-size passes).
        low, high = int(pixels.min()), int(pixels.max())
        if high - low < 1 << 17:
            table = _display(np.arange(low, high + 1, dtype=np.int64), ds, photometric)
            index = pixels.astype(np.int64) - low if low else pixels
            return np.ascontiguousarray(table[index])
    return _display(pixels, ds, photometric)


def _display(values: np.ndarray, ds: Any, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: PLC0415

    try:
        values = apply_modality_lut(values, ds)
        low, high = _output_range(ds)
        if _has_voi(ds):
            values = apply_voi_lut(values, ds, prefer_lut=True)
    except (ValueError, TypeError, IndexError, KeyError) as err:
        raise ImageReadError(f"corrupt DICOM (invalid LUT or window: {type(err).__name__})") \
            from None
    gray = _scale(np.asarray(values, dtype=np.float64), low, high)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _has_voi(ds: Any) -> bool:
    return bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)


def _output_range(ds: Any) -> tuple[float, float]:
    """The range the display chain can output, which maps onto 0..255."""
    if ds.get("VOILUTSequence"):
        return 0.0, float(2 ** _lut_bits(ds.VOILUTSequence[0], "VOI") - 1)
    # Windowing outputs the input range of the window function (pydicom's apply_windowing): the
    # Modality LUT's range, or BitsStored's range through the rescale. Without a VOI the same
    # range holds the (rescaled) values themselves.
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** _lut_bits(ds.ModalityLUTSequence[0], "Modality") - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2 ** bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _lut_bits(item: Any, kind: str) -> int:
    """A LUT's entry bit depth (LUTDescriptor's third value): 1..16, as PS3.3 C.11 allows."""
    try:
        bits = int(item.get("LUTDescriptor")[2])
    except (TypeError, ValueError, IndexError, OverflowError):
        raise ImageReadError(f"corrupt DICOM ({kind} LUT without a bit depth)") from None
    if not 1 <= bits <= 16:
        raise ImageReadError(f"corrupt DICOM ({kind} LUT bit depth {bits}, allowed 1..16)")
    return bits


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))

