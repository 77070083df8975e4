"""Converter speed on DICOM sources (issue 10): images/s with 1 and 2 workers, side by side.

    python benchmarks/dicom_convert.py [--count=120 --side=1536 --repeats=3 ...]

Generates (once, cached in --work_dir) a Kaggle-layout folder of `.dcm` chest-X-ray-like images,
12 bits in 16-bit words with a rescale and a window, uncompressed ("explicit": Explicit VR Little
Endian) and JPEG 2000 lossless ("j2k", decoded by pylibjpeg-openjpeg), then times full
`build_records` runs (the converter library, fresh output dir each repeat) with 1 and 2 workers.
Prints a table and appends JSON lines to --output. Needs the [dicom] extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags

from xray_tfdata import files
from xray_tfdata.benchmarking import convert_bench, harness
from xray_tfdata.records import sources, synthetic_dicom

_CLASSES = ("NORMAL", "COVID19", "PNEUMONIA")


def _image(side: int, rng: np.random.Generator) -> np.ndarray:
    """A 12-bit chest-like image: bright body, two dark lung fields, smooth texture, noise."""
    yy, xx = np.mgrid[:side, :side] / side
    body = 2800 + 600 * np.cos(3 * xx) * np.sin(2 * yy)
    for cx in (0.3, 0.7):
        lung = ((yy - 0.5) / 0.33) ** 2 + ((xx - cx) / 0.16) ** 2 <= 1
        body[lung] -= 1900
    noise = rng.normal(0, 60, (side // 8, side // 8))
    texture = np.kron(noise, np.ones((8, 8)))[:side, :side]
    return np.clip(body + texture, 0, 4095).astype(np.uint16)


def _dicom_bytes(pixels: np.ndarray, syntax: str, index: int) -> bytes:
    """12 bits in 16-bit words, with a rescale and a window, as a detector's export."""
    ds = synthetic_dicom.dataset(pixels, bits_stored=12, uid_suffix=str(index + 1),
                                 Manufacturer="Benchmark", RescaleSlope=1, RescaleIntercept=0,
                                 WindowCenter=2000, WindowWidth=3500)
    return synthetic_dicom.to_bytes(ds, syntax)


def make_corpus(root: Path, syntax: str, count: int, side: int) -> Path:
    """<root>/<syntax>-<count>x<side>/{train,test}/<class>/IMnnnn.dcm, written once."""
    data_dir = root / f"{syntax}-{count}x{side}"
    done = data_dir / ".complete"
    if done.is_file():
        return data_dir
    rng = np.random.default_rng(0)
    for i in range(count):
        split = "test" if i % 5 == 4 else "train"
        folder = data_dir / split / _CLASSES[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IM{i:04d}.dcm").write_bytes(_dicom_bytes(_image(side, rng), syntax, i))
    done.write_text("ok\n")
    return data_dir


FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/xray_dicom_bench", "Cache of the generated DICOM corpora.")
flags.DEFINE_string("output", "workspace/benchmarks/results.jsonl",
                    "JSON-lines file the results are appended to.")
flags.DEFINE_integer("count", 120, "DICOM files per corpus.")
flags.DEFINE_integer("side", 1536, "Stored image side (pixels).")
flags.DEFINE_integer("image_size", 224, "Output side of the records.")
flags.DEFINE_integer("repeats", 3, "Timed converter runs per variant (median, spread).")
flags.DEFINE_list("syntaxes", list(synthetic_dicom.SYNTAXES), "Transfer syntaxes to measure.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    args = FLAGS
    syntaxes = list(args.syntaxes)
    unknown = sorted(set(syntaxes) - set(synthetic_dicom.SYNTAXES))
    if unknown:
        raise app.UsageError(f"--syntaxes={','.join(syntaxes)}: unknown {unknown}; allowed: "
                             f"{','.join(synthetic_dicom.SYNTAXES)}")
    root = Path(args.work_dir)
    run_id, rows, records = harness.new_run_id(), [], []
    for syntax in syntaxes:
        data_dir = make_corpus(root, syntax, args.count, args.side)
        found = len(sources.scan_sources(data_dir).files)
        if found != args.count:
            raise SystemExit(f"error: the scanner found {found} of {args.count} .dcm files in "
                             f"{data_dir}; records/sources.py must accept "
                             "image_format.is_source_file.")
        rates = {}
        for workers in (1, 2):
            result = convert_bench.measure_converter(str(data_dir), str(root / "out"),
                                                     args.image_size, workers, args.repeats,
                                                     warmup=False)
            rate = result["images_per_sec"]
            rates[workers] = rate["median"]
            rows.append({"variant": f"{syntax} DICOM, {workers} worker(s)", **rate,
                         "vs_1": rate["median"] / rates[1]})
            records.append({"run_id": run_id, "time": harness.utc_now(), "mode": "dicom_convert",
                            "syntax": syntax, "count": args.count, "side": args.side,
                            "image_size": args.image_size, "machine": harness.machine_facts(),
                            "versions": files.versions(), **result})
    columns = (("variant", "variant"), ("median", "images/s"), ("min", "min"), ("max", "max"),
               ("spread_pct", "spread %"), ("vs_1", "x 1 worker"))
    print(harness.format_table(rows, columns))
    out = harness.append_jsonl(args.output, records)
    print(f"{len(records)} JSON lines appended to {out} (run {run_id}); "
          f"{json.dumps({r['variant']: round(r['median'], 1) for r in rows})}")


if __name__ == "__main__":
    app.run(main)
