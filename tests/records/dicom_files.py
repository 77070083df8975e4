"""A DICOM test corpus written with pydicom: tiny chest-X-ray-like images with known pixels.

`chest(...)` is a 48x40 stored image whose "lungs" (two dark ovals in the displayed image) sit in a
bright body; for MONOCHROME1 the stored values are inverted, as a detector writing MONOCHROME1
would store them, so every variant must DISPLAY with dark lungs after decoding.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import RLELossless

from xray_tfdata.records import synthetic_dicom
from xray_tfdata.records.synthetic_dicom import base as _base
from xray_tfdata.records.synthetic_dicom import dataset

ROWS, COLS = 48, 40
DX_STORAGE = synthetic_dicom.DX_STORAGE
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

# Protected health information that must never leave the input (test_dicom searches outputs).
PHI = {
    "PatientName": "Zyxwa^Qorbel",
    "PatientID": "PID-93817465",
    "PatientBirthDate": "19410317",
    "AccessionNumber": "ACC55501234",
    "StudyDate": "20200412",
    "InstitutionName": "Hospital Vexmoor Central",
    "ReferringPhysicianName": "Drquil^Anselm",
}


def lung_mask() -> np.ndarray:
    """True inside the two lung fields of the displayed image."""
    yy, xx = np.mgrid[:ROWS, :COLS]
    left = ((yy - 24) / 16) ** 2 + ((xx - 11) / 7) ** 2 <= 1
    right = ((yy - 24) / 16) ** 2 + ((xx - 29) / 7) ** 2 <= 1
    return left | right


def displayed(low: int, high: int) -> np.ndarray:
    """Displayed intensities (bright body, dark lungs) as integers in [low, high]."""
    image = np.full((ROWS, COLS), high, dtype=np.int64)
    image[lung_mask()] = low
    return image


def to_bytes(ds: Dataset) -> bytes:
    with warnings.catch_warnings():  # the malformed corpus below is invalid on purpose
        warnings.simplefilter("ignore", UserWarning)
        return synthetic_dicom.to_bytes(ds)


def write(path: Path, ds: Dataset) -> Path:
    path.write_bytes(to_bytes(ds))
    return path


def chest_12bit_windowed(**elements) -> Dataset:
    """12 bits in 16, a rescale (slope 2, intercept -1000) and a window on the body's range."""
    stored = displayed(600, 3400)  # output values 200 .. 5800 after the rescale
    return dataset(stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                   WindowCenter=3000, WindowWidth=5601, **elements)


def chest_16bit_rescaled(**elements) -> Dataset:
    """16 bits, rescale slope 0.5 and no window: scaled over BitsStored's range."""
    return dataset(displayed(8000, 60000), bits_stored=16, RescaleSlope=0.5,
                   RescaleIntercept=0, **elements)


def chest_monochrome1(**elements) -> Dataset:
    """MONOCHROME1 (0 = white): the stored lungs are HIGH values."""
    stored = 4095 - displayed(300, 3800)
    return dataset(stored, bits_stored=12, photometric="MONOCHROME1", **elements)


def multi_frame() -> Dataset:
    frames = np.stack([displayed(100, 3000)] * 3)
    ds = dataset(frames[0], bits_stored=12)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.astype(np.uint16).tobytes()
    return ds


def structured_report() -> Dataset:
    """A Basic Text SR: a DICOM file with no pixel data at all."""
    return _base(BASIC_TEXT_SR, "2", "SR")


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


# --- malformed files (issue 16): each must be a reject with a reason, never a crashed build ----

def raw_element(ds: Dataset, keyword: str, vr: str, value: bytes) -> Dataset:
    """Sets `keyword` to raw bytes as a malformed file holds them (pydicom would refuse to write
    an invalid value such as a NumberOfFrames of "abc" through the normal attribute setter)."""
    tag = Tag(keyword)
    value += b" " * (len(value) % 2)  # DICOM values have even length
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return ds


def voi_lut(bits: int, **elements) -> Dataset:
    """A VOI LUT Sequence whose LUTDescriptor claims `bits` bits per entry (65535: 2**65535)."""
    ds = chest_12bit_windowed(**elements)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, bits]
    item.add_new("LUTData", "OW", np.arange(4096, dtype=np.uint16).tobytes())
    ds.VOILUTSequence = [item]
    return ds


def number_of_frames(text: bytes, **elements) -> Dataset:
    """NumberOfFrames holding `text` (e.g. b"abc", or a patient's name) instead of a number."""
    return raw_element(chest_12bit_windowed(**elements), "NumberOfFrames", "IS", text)


def bits_allocated_one(**elements) -> Dataset:
    """BitsAllocated 1 (a bit plane) over 16-bit pixel data: pydicom reads it as 16 frames."""
    ds = chest_12bit_windowed(**elements)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    return ds


def rgb16_rle(rows: int, cols: int) -> Dataset:
    """A 16-bit RGB RLE Lossless header claiming rows x cols, with a stub fragment for pixels:
    only the header is read before the decoded-bytes check refuses it."""
    ds = dataset(np.zeros((2, 2), np.uint16))
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = encapsulate([bytes(64)])
    ds["PixelData"].VR = "OB"
    return ds
