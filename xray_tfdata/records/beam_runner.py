"""`build_records --runner=beam`: the converter's two heavy phases as Apache Beam pipelines.

Imported only when asked for (convert._runner_class), and apache_beam only then: the [beam]
extra is optional. Everything that decides the records stays in convert.py and runs in the
launching process exactly as for the local runner: the scan, the pure plan (rejects, splits,
dedupe, augmentation choice, shard cuts) and the manifest. Beam runs only
  1. the decode pass: per source, the same `decode_pass.process_source` the local pool runs; its
     encoded outputs go to one file per source under `.build/beam/objects/` (raw bytes back to
     back), and its small facts (SourceInfo, hash, output sizes, reason) to JSON lines that the
     launcher reads back to plan. Image bytes never travel through the plan;
  2. the shard writes: one element per planned shard (its examples, in plan order, and only the
     facts they need), written by `shard_writer.write_shard` (temporary name, fsync, rename)
     from `convert.shard_records`, the function the local runner uses. Membership comes from the
     plan, never from Beam's bundles, so the shards are byte-identical to the local runner's
     (`WriteToTFRecord` would pick its own, non-deterministic, shard assignment).
Resume: Beam retries a failed bundle by itself (both steps are idempotent: same input, same
bytes, atomic renames); a failed job is rerun whole (the same command: `.build/beam/` starts
over, shards already complete are rewritten to the same bytes).
Paths: every worker opens data_dir and output_dir itself, so on a cluster (Dataflow) both must
be a file system all workers and the launcher mount (NFS / Filestore, a gcsfuse mount).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging as logging_std
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import cv2
from absl import logging

# Only TensorFlow-free modules at import time: a Beam worker imports this module to run the
# decode step, and (as in the local pool) a decode worker must not pay for TensorFlow (seconds
# and ~600 MB each). The shard writer, which needs it, is imported inside the write step.
from xray_tfdata.records import decode_pass, image_io, sources

if TYPE_CHECKING:
    from xray_tfdata.records import shard_plan
    from xray_tfdata.records.conversion_config import ConversionConfig
    from xray_tfdata.records.conversion_state import SpillEntry

# Beam warns at import that its GCP clients are missing ("apitools not found"): noise on one
# machine, and DataflowRunner names the missing apache-beam[gcp] itself when it is used.
_root_level = logging_std.getLogger().level
logging_std.getLogger().setLevel(logging_std.ERROR)
try:
    import apache_beam as beam
except ImportError as _missing:  # the [beam] extra is optional: import_beam() says what to do
    beam, _IMPORT_ERROR = None, str(_missing)
finally:
    logging_std.getLogger().setLevel(_root_level)

# Beam's DirectRunner (2.6x+) first tries the PrismRunner, which downloads a binary from GitHub;
# the FnApiRunner it falls back to needs nothing and takes --direct_running_mode /
# --direct_num_workers, so it is the default when the options name no runner.
DEFAULT_BEAM_RUNNER = "FnApiRunner"
BEAM_DIR = "beam"  # inside .build/: per-source objects, facts, written shard entries
EXTRA_HINT = "pip install -e '.[beam]' (or pip install 'apache-beam>=2.69,<3')"


def import_beam() -> Any:
    """The apache_beam module, or a one-line ConversionError naming the extra."""
    from xray_tfdata.records.convert import ConversionError  # noqa: PLC0415 - convert imports us

    if beam is None:
        raise ConversionError(f"--runner=beam needs Apache Beam, which is not installed "
                              f"({_IMPORT_ERROR}). Install the extra: {EXTRA_HINT}.")
    return beam


def check_output_dir(output_dir: str) -> None:
    """Refuses, in one line, an --output_dir URL whose scheme Beam's file systems do not know.

    Beam writes its per-source objects and facts under the output dir through its own
    FileSystems (gs:// with apache-beam[gcp], s3:// with apache-beam[aws]), not through
    TensorFlow's: a scheme only TensorFlow knows (ram://, or gs:// without the gcp extra) would
    fail deep inside the pipeline, after the output dir was touched.
    """
    from xray_tfdata import paths  # noqa: PLC0415
    from xray_tfdata.records.convert import ConversionError  # noqa: PLC0415 - convert imports us

    if not paths.is_url(output_dir):
        return
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

    try:
        FileSystems.get_filesystem(output_dir)
    except ValueError:
        scheme = output_dir.split("://", 1)[0]
        raise ConversionError(
            f"--runner=beam cannot write to output_dir={output_dir!r}: Apache Beam has no file "
            f"system for {scheme}:// here (gs:// needs pip install 'apache-beam[gcp]', s3:// "
            "'apache-beam[aws]'). Install it, or use --runner=local, which writes any URL "
            "TensorFlow knows.") from None


def pipeline_options(text: str) -> Any:
    """PipelineOptions from "--a=1,--b=2"; the download-free FnApiRunner unless a runner is named."""
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415

    from xray_tfdata.records.conversion_config import beam_args  # noqa: PLC0415

    args = beam_args(text)
    for name, default in (("runner", DEFAULT_BEAM_RUNNER),
                          # Quiet by default: local SDK workers otherwise log every channel.
                          ("default_sdk_harness_log_level", "ERROR")):
        if not any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args):
            args.append(f"--{name}={default}")
    return PipelineOptions(args)


def _runner_for(options: Any) -> Any:
    """The runner instance: our default FnApiRunner gets the options its workers will see.

    Created by name, the FnApiRunner hands its multi_processing workers no options at all, so
    each would log at INFO (a dozen lines per bundle on the user's terminal); Beam's own
    DirectRunner builds it this way (with the options in its provision info).
    """
    name = options.get_all_options()["runner"]
    if name != DEFAULT_BEAM_RUNNER:
        return None  # Beam creates it from --runner
    from apache_beam.portability.api import beam_provision_api_pb2  # noqa: PLC0415
    from apache_beam.runners.portability.fn_api_runner import fn_runner  # noqa: PLC0415
    from apache_beam.runners.portability.portable_runner import JobServiceHandle  # noqa: PLC0415

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


# ---------------------------------------------------------------------------------------------
# Per-source objects and facts (data only: JSON and raw bytes, never pickle).


def object_path(objects: str, key: str) -> Path:
    """Where a source's encoded outputs go: keys hold '/' and 'name:', so files are named by hash."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return Path(objects) / digest[:2] / digest


def _facts(processed: decode_pass.Processed) -> str:
    info = None if processed.info is None else dataclasses.asdict(processed.info)
    return json.dumps({"key": processed.key, "signature": list(processed.signature),
                       "info": info, "phash": processed.phash, "reason": processed.reason,
                       "outputs": [[name, len(data)] for name, data in processed.outputs]},
                      sort_keys=True)


def _entry(line: str) -> SpillEntry:
    from xray_tfdata.records.conversion_state import SpillEntry  # noqa: PLC0415 - launcher only

    h = json.loads(line)
    info = h["info"]
    if info is not None:
        info = image_io.SourceInfo(**{**info, "tags": tuple(tuple(t) for t in info["tags"])})
    sizes = tuple(int(size) for _, size in h["outputs"])
    return SpillEntry(offset=0, length=sum(sizes), key=h["key"],
                      signature=tuple(h["signature"]),
                      augmentations=tuple(name for name, _ in h["outputs"]), sizes=sizes,
                      info=info, phash=int(h["phash"]), reason=h["reason"])


def read_outputs(objects: str, entry: SpillEntry) -> dict[str, bytes]:
    """A source's encoded images by augmentation name, from its object file."""
    body = object_path(objects, entry.key).read_bytes()
    if len(body) != entry.length:
        raise OSError(f"{object_path(objects, entry.key)}: {len(body)} bytes, expected "
                      f"{entry.length} (rerun the build)")
    ends = itertools.accumulate(entry.sizes)
    return {name: body[end - size:end]
            for name, size, end in zip(entry.augmentations, entry.sizes, ends)}


class _Decode(beam.DoFn if beam is not None else object):
    """Beam step 1, on a worker: one source read, decoded and encoded once; its facts out."""

    def __init__(self, settings: decode_pass.ProcessSettings, objects: str) -> None:
        super().__init__()
        self.settings, self.objects = settings, objects

    def setup(self) -> None:
        # As in a local pool worker: one OpenCV thread per worker, so N workers use N cores.
        self.threads = cv2.getNumThreads()
        cv2.setNumThreads(1)

    def teardown(self) -> None:
        cv2.setNumThreads(self.threads)

    def process(self, task: decode_pass.Task) -> Iterable[str]:
        processed = decode_pass.process_source(task, self.settings)
        path = object_path(self.objects, task.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A retried bundle rewrites the same bytes; the rename keeps a reader from a torn file.
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(b"".join(data for _, data in processed.outputs))
        os.replace(tmp, path)
        yield _facts(processed)


def _write_shard(job: tuple[str, list, dict, dict], config: ConversionConfig, out: str,
                 objects: str) -> str:
    """Beam step 2, on a worker: one planned shard written by the shared writer; its entry out."""
    from xray_tfdata.records import convert, shard_writer  # noqa: PLC0415 - TF only here

    name, examples, index, files = job
    records = convert.shard_records(examples, index, files, config,
                                    lambda entry: read_outputs(objects, entry))
    entry = shard_writer.write_shard(Path(out) / name, records, config.compression)
    return json.dumps({"name": name, "entry": entry}, sort_keys=True)


def _read_lines(prefix: Path) -> list[str]:
    return [line for path in sorted(prefix.parent.glob(prefix.name + "*"))
            for line in path.read_text(encoding="utf-8").splitlines() if line]


# ---------------------------------------------------------------------------------------------
# The runner convert.build_records drives (same methods as convert._LocalRunner).


class BeamRunner:
    """Runs the decode pass and the shard writes as two Beam pipelines (see the module doc)."""

    def __init__(self, out: Path, config: ConversionConfig, progress: bool) -> None:
        from xray_tfdata.records import conversion_state  # noqa: PLC0415 - launcher only

        del progress  # Beam reports its own progress (its logs, the Dataflow console)
        import_beam()
        self.out, self.config = out, config
        # The patient key never leaves this process: workers get patient hashes, not the key.
        self.worker_config = dataclasses.replace(config, patient_key="")
        self.work = out / conversion_state.WORK_DIR / BEAM_DIR
        shutil.rmtree(self.work, ignore_errors=True)  # a failed job is rerun whole
        self.objects = str(self.work / "objects")
        self.options = pipeline_options(config.beam_pipeline_options)

    def _run(self, label: str, elements: list, step: Any, output: Path) -> list[str]:
        # Reshuffle: Create's elements would otherwise stay fused on one worker.
        with beam.Pipeline(runner=_runner_for(self.options), options=self.options) as p:
            _ = (p | f"{label}Items" >> beam.Create(elements)
                 | f"{label}Spread" >> beam.Reshuffle()
                 | label >> step
                 | f"{label}Out" >> beam.io.WriteToText(str(output), file_name_suffix=".jsonl"))
        return _read_lines(output)

    def decode(self, tasks: list[decode_pass.Task]) -> tuple[dict[str, SpillEntry], float, int]:
        start = time.monotonic()
        logging.info("Beam decode pass: %d sources (%s).", len(tasks),
                     self.config.beam_pipeline_options or f"--runner={DEFAULT_BEAM_RUNNER}")
        step = beam.ParDo(_Decode(self.config.settings(), self.objects))
        index = {e.key: e for e in map(_entry, self._run("Decode", tasks, step,
                                                          self.work / "facts"))}
        missing = [t.key for t in tasks if t.key not in index]
        if missing:
            from xray_tfdata.records.convert import ConversionError  # noqa: PLC0415

            raise ConversionError(f"The Beam decode pass returned no result for {len(missing)} "
                               f"sources (e.g. {missing[0]}); rerun the build.")
        elapsed = max(time.monotonic() - start, 1e-9)
        return index, len(tasks) / elapsed, len(tasks)

    def write(self, plans: dict[str, list[list[shard_plan.PlannedExample]]],
              index: dict[str, SpillEntry], files: dict[str, sources.SourceFile]
              ) -> dict[str, list[dict]]:
        from xray_tfdata.records import shard_writer  # noqa: PLC0415 - launcher only

        jobs = [(shard_writer.shard_name(split, i, len(plan)), examples,
                 {e.relpath: index[e.relpath] for e in examples},
                 {e.relpath: files[e.relpath] for e in examples})
                for split, plan in plans.items() for i, examples in enumerate(plan)]
        step = beam.Map(_write_shard, self.worker_config, str(self.out), self.objects)
        written = {}
        for line in self._run("Write", jobs, step, self.work / "shards"):
            item = json.loads(line)
            written[item["name"]] = item["entry"]
        for name, _, _, _ in jobs:
            logging.info("Wrote %s: %d examples, %.1f MB", name, written[name]["num_examples"],
                         written[name]["bytes"] / 2**20)
        return {split: [written[shard_writer.shard_name(split, i, len(plan))]
                        for i in range(len(plan))] for split, plan in plans.items()}

    def close(self) -> None:
        """Nothing held open; .build/ (with beam/) goes when the manifest is written."""

