"""One request's images -> model inputs, before anything is decoded, one reason per bad file.

- The decoded-byte budget (issue 16, item 10): each image's decoded size (width x height x
  channels x bytes per sample, x frames for a DICOM) comes from its header
  (image_format.estimate_decoded_bytes, which the converter's cap uses too). An image over the
  per-image cap gets its own error; a request whose images sum over the per-request cap is refused whole (413), before
  the first decode, so four requests of 6000 px 16-bit RGB DICOMs no longer take gigabytes.
- Whatever fails for one file (a malformed DICOM that trips a parser, a decoder's surprise) is
  that file's error, in our words: exception text is never shown, since DICOM tag values (names,
  ids) can appear in it (items 6 and 7). The rest of the batch is answered.
"""

from __future__ import annotations

import logging
from typing import Sequence

from xray_tfdata.records import image_format
from xray_tfdata.serving import predict
from xray_tfdata.serving.web.payloads import BadRequest

log = logging.getLogger("xray_tfdata.serve")

UNREADABLE = "cannot read this file (malformed or unsupported content)"


def _mib(n: int) -> str:
    return f"{n / 1048576:,.1f} MiB"


def decoded_bytes(data: bytes) -> int | None:
    """The bytes `data` decodes to, from its header (image_format's estimate, shared with the
    converter's per-image cap); None when the header cannot say (the file is then refused by the
    decode step with its own reason)."""
    try:
        return image_format.estimate_decoded_bytes(data)
    except image_format.ImageReadError:
        return None


def budget(images: Sequence[bytes], max_image_bytes: int,
           max_request_bytes: int) -> list[str | None]:
    """A reason per image over `max_image_bytes` (else None).

    Raises:
      BadRequest (413): the images within the per-image cap sum over `max_request_bytes`.
    """
    sizes = [decoded_bytes(data) for data in images]
    reasons = [None if size is None or size <= max_image_bytes else
               f"decodes to {_mib(size)}, more than the {_mib(max_image_bytes)} one image may "
               "(width x height x channels x bytes per sample, from its header)"
               for size in sizes]
    total = sum(size for size, reason in zip(sizes, reasons) if size and not reason)
    if total > max_request_bytes:
        raise BadRequest(
            f"the {len(images)} images of this request decode to {_mib(total)}, more than the "
            f"{_mib(max_request_bytes)} one request may (--max_request_decoded_mb); send fewer "
            "images per request", 413)
    return reasons


def prepare(images: Sequence[bytes], reasons: Sequence[str | None],
            max_pixels: int) -> list[tuple[bytes | None, str | None]]:
    """(model input, None) or (None, reason) per image; never raises for one file."""
    out: list[tuple[bytes | None, str | None]] = []
    for data, reason in zip(images, reasons):
        if reason:
            out.append((None, reason))
            continue
        try:
            out.append(predict.model_input(data, max_pixels))
        except Exception as err:  # noqa: BLE001 - one file must not fail its batch (item 6)
            # The type only: the message may quote a DICOM tag value (item 7).
            log.warning("an upload could not be prepared (%s)", type(err).__name__)
            out.append((None, UNREADABLE))
    return out


def predict_all(serving, images: Sequence[bytes], *, max_pixels: int, max_image_bytes: int,
                max_request_bytes: int) -> tuple[list[dict], list[bytes | None]]:
    """One result per image ("probabilities" + "predicted", or "error"), and the prepared model
    inputs (None for a refused image; Grad-CAM reuses them). Raises BadRequest (413) over the
    request's decoded-byte budget."""
    prepared = prepare(images, budget(images, max_image_bytes, max_request_bytes), max_pixels)
    ready = [data for data, _ in prepared if data is not None]
    predicted = iter(predict.predict_bytes(serving, ready, batch_size=len(ready) or 1,
                                           max_pixels=max_pixels) if ready else [])
    results = [next(predicted) if data is not None else {"error": reason}
               for data, reason in prepared]
    inputs = [data if "error" not in result else None
              for (data, _), result in zip(prepared, results)]
    return results, inputs
