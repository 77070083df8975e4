"""Synthetic DICOM files: one writer for the tests' DICOM corpus and the DICOM converter benchmark.

Needs pydicom (the [dicom] extra), imported here only: nothing in the converter imports this
module. Datasets are Digital X-Ray (DX) images with 16-bit words, file meta in Explicit VR Little
Endian, UIDs under pydicom's example root (fixed, so the same call gives the same bytes).
"""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's example root; fixed, not random
# Transfer syntaxes `to_bytes` writes: uncompressed, or JPEG 2000 lossless (pylibjpeg-openjpeg).
SYNTAXES: tuple[str, ...] = ("explicit", "j2k")


def base(sop_class: str, uid_suffix: str, modality: str) -> Dataset:
    """A dataset with its file meta (explicit VR little endian) and SOP identity set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID_ROOT + uid_suffix
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = UID_ROOT + uid_suffix
    ds.Modality = modality
    return ds


def dataset(stored: np.ndarray, *, bits_stored: int = 16, photometric: str = "MONOCHROME2",
            signed: bool = False, uid_suffix: str = "1", **elements) -> Dataset:
    """A single-frame PA DX dataset with `stored` as its pixel data (uint16/int16 words);
    `elements` (keyword=value) are set last, so they may replace any default here."""
    ds = base(DX_STORAGE, uid_suffix, "DX")
    ds.ViewPosition = "PA"
    ds.Manufacturer = "Acme Detectors"
    ds.PixelSpacing = [0.139, 0.139]
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    for name, value in elements.items():
        setattr(ds, name, value)
    return ds


def to_bytes(ds: Dataset, syntax: str = "explicit") -> bytes:
    """The file's bytes (128-byte preamble + "DICM" + file meta + dataset) in `syntax`."""
    if syntax not in SYNTAXES:
        raise ValueError(f"syntax must be one of {SYNTAXES}. Received: syntax={syntax!r}.")
    if syntax == "j2k":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
