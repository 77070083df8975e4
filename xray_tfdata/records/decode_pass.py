"""The converter's one decode pass: every source read and encoded once, results appended to the spill.

`process_source` is the per-image work (read + decode once, perceptual hash, intensity, resize,
offline augmentation, encode). It runs in-process for one worker, else in a spawn-context pool
(the Beam runner runs the same function). Workers import this module, which imports numpy and
OpenCV modules only, never TensorFlow: TensorFlow would cost each worker ~1 s and hundreds of MB.
Sources already in the spill with unchanged size, mtime and sha256 are reused, which is how a
killed conversion resumes. Output never depends on worker count or order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import multiprocessing
import os
import signal
import sys
import types
from typing import TYPE_CHECKING, Iterator, Sequence

import cv2
from absl import logging

from xray_tfdata import console, files, paths
from xray_tfdata.records import dedupe, image_io, intensity, offline_augment

if TYPE_CHECKING:  # conversion_state imports TensorFlow (via the manifest); workers import this
    from xray_tfdata.records.conversion_state import Spill, SpillEntry


# URL sources read ahead by the parent per window: bounds the bytes held for the pool.
REMOTE_WINDOW = 256
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _with_bytes(task: Task) -> Task:
    """A URL source with its bytes and signature read here (see Task); a local one as is.

    An unreadable URL is passed on without bytes: the worker's read then fails and the source
    becomes a reject with a reason, like an unreadable local file.
    """
    if not paths.is_url(task.path):
        return task
    location = paths.location(task.path)
    try:
        stat = location.stat()
        return dataclasses.replace(task, data=location.read_bytes(),
                                   signature=(stat.st_size, stat.st_mtime_ns))
    except OSError:  # paths.py maps gfile's errors to OSError, as pathlib raises them
        return task


def _process(tasks: Sequence[Task], workers: int, settings: ProcessSettings
             ) -> Iterator[Processed]:
    workers = min(workers, len(tasks))
    remote = any(paths.is_url(t.path) for t in tasks)
    if workers <= 1:
        # In-process: no pickling, no pool start-up; same function, so same bytes. One OpenCV
        # thread, as in a pool worker, so --num_workers=1 really means one core.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for task in tasks:
                yield process_source(_with_bytes(task), settings)
        finally:
            cv2.setNumThreads(threads)
        return
    # spawn (not fork): the parent holds TensorFlow's threads and state, which fork would copy
    # unsafely. Workers import this module, which never imports TensorFlow. A futures executor,
    # not multiprocessing.Pool: when the OS kills a worker (out of memory), Pool.imap waits
    # forever for its lost task; the executor raises BrokenProcessPool, which becomes WorkerDied.
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(tasks) // (workers * 8)))
    work = functools.partial(process_source, settings=settings)
    window = REMOTE_WINDOW if remote else len(tasks)
    with concurrent.futures.ProcessPoolExecutor(workers, ctx, initializer=init_worker) as pool:
        try:
            for start in range(0, len(tasks), window):
                batch = [_with_bytes(t) for t in tasks[start:start + window]]
                try:
                    with main_module_hidden():  # the executor starts workers on first submits
                        results = pool.map(work, batch, chunksize=chunk)
                except OSError as err:
                    # A worker killed while the executor was still starting the others: the
                    # broken pool has closed its pipes, and the next start fails on them.
                    raise WorkerDied(_worker_died(workers)) from err
                yield from results
        except concurrent.futures.process.BrokenProcessPool as err:
            raise WorkerDied(_worker_died(workers)) from err


def _worker_died(workers: int) -> str:
    return (f"A converter worker process died (killed by the OS, most often for lack of "
            f"memory, with {workers} workers). Everything converted so far is kept: rerun "
            f"the same command to resume, with fewer --num_workers (now {workers}) or a "
            f"lower --max_pixels if memory is short.")


class WorkerDied(RuntimeError):
    """A pool worker was killed mid-task; the spill keeps what finished, a rerun resumes."""


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Starts spawn workers without re-importing the caller's __main__.

    spawn re-runs the parent's main module (script, notebook kernel, `-m` entry) in every worker
    so that functions defined there can be unpickled. Ours live in this module, and a main module
    that imports TensorFlow would cost each worker seconds and ~600 MB (measured: 700 MB RSS
    per worker instead of 75 MB). Workers are created inside this block only.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _unchanged(entry: SpillEntry, path: str) -> bool:
    """Whether the spilled result still belongs to the file: same size, mtime and content.

    Size and mtime alone miss a file rewritten in place with its mtime restored (a copy tool
    keeping times, `touch -r`): the old pixels and sha256 would be kept for the new content.
    The content hash costs one read of the file (no decode), and only on resume. A rejected
    source has no hash and is tried again (rejects are few: --max_reject_fraction).
    """
    return (entry.info is not None and entry.signature == file_signature(path)
            and files.sha256_file(path) == entry.info.sha256)


def run_pass(tasks: list[Task], spill: Spill, workers: int,
             settings: ProcessSettings, progress: bool
             ) -> tuple[dict[str, SpillEntry], float, int]:
    """Processes every task not already in the spill; returns the index, images/s, count done."""
    reusable = {}
    for task in tasks:
        entry = spill.index.get(task.key)
        if (entry is not None and entry.augmentations == task.augmentations
                and _unchanged(entry, task.path)):
            reusable[task.key] = entry
    todo = [t for t in tasks if t.key not in reusable]
    if reusable:
        logging.info("Resuming: %d of %d sources already processed.", len(reusable), len(tasks))
    bar = console.ProgressBar(len(todo), "Converting", enabled=progress and bool(todo))
    for processed in _process(todo, workers, settings):
        reusable[processed.key] = spill.append(processed)
        bar.update()
    bar.close()
    return reusable, bar.rate(), len(todo)


# ---------------------------------------------------------------------------------------------
# Per-image work, run in worker processes.


@dataclasses.dataclass(frozen=True)
class ProcessSettings:
    """What every output image looks like (a picklable subset of the conversion config)."""

    image_size: int
    resize_mode: str
    channels: int
    image_format: str
    jpeg_quality: int
    max_pixels: int = image_io.DEFAULT_MAX_PIXELS
    intensity: str = "none"  # records/intensity.INTENSITY_MODES


@dataclasses.dataclass(frozen=True, slots=True)  # one per source: no per-object __dict__
class Task:
    """One source to process, with the augmentations the plan chose for it ("none" first)."""

    key: str  # relpath
    path: str
    augmentations: tuple[str, ...]
    # A URL source's bytes and signature, read by the parent (decode_pass): workers never
    # import TensorFlow (gfile), and a ram:// file exists only in the parent's memory.
    data: bytes | None = None
    signature: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Processed:
    """A worker's result: encoded outputs + provenance, or the reason the source was rejected."""

    key: str
    signature: tuple[int, int]  # (size, mtime_ns) at read time: resume reuses it only if unchanged
    info: image_io.SourceInfo | None = None
    phash: int = 0
    outputs: tuple[tuple[str, bytes], ...] = ()
    reason: str = ""


def file_signature(path: str) -> tuple[int, int]:
    try:
        # A URL (parent process only: see Task) is stat'ed through its file system.
        st = paths.location(path).stat() if paths.is_url(path) else os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def process_source(task: Task, settings: ProcessSettings) -> Processed:
    """Decodes one source once and produces every planned output from that single decode.

    Augmentations run on the resized gray image: the network only ever sees `image_size` pixels,
    so a 3x3 filter means the same thing for a 400 px and a 4000 px source, and it is ~80x cheaper.
    Intensity normalisation runs before the resize, on the full image, as the serving signature
    applies it to an upload; the perceptual hash stays that of the un-normalised image, so
    deduplication does not depend on --intensity.
    """
    signature = task.signature or file_signature(task.path)
    normalised = settings.intensity != "none"
    try:
        # target_size lets libjpeg decode a large JPEG at 1/2 scale in the DCT domain (still >= 2x
        # the output side, so the area resize that follows sees enough pixels): ~1.7x faster decode.
        # Not with intensity normalisation: the serving signature equalises the FULL decode, and a
        # half-scale image has a (slightly) different histogram.
        target_size = 0 if normalised else settings.image_size
        gray, info = (image_io.read_source(task.path, target_size=target_size,
                                           max_pixels=settings.max_pixels)
                      if task.data is None else
                      image_io.decode_source_bytes(task.data, target_size=target_size,
                                                   max_pixels=settings.max_pixels))
        small = image_io.resize(gray, settings.image_size, settings.resize_mode)
        # The hash's own thumbnail is an area average, so hashing the (area-)resized output
        # gives nearly the same bits at 1/20 of the cost of a second pass over a 2000 px source
        # (measured: 5.9 ms -> 0.3 ms per image). Padded outputs would hash their black borders,
        # so pad mode hashes the full-size image.
        phash = dedupe.perceptual_hash(small if settings.resize_mode == "stretch" else gray)
        if normalised:
            small = image_io.resize(intensity.normalise(gray, settings.intensity),
                                    settings.image_size, settings.resize_mode)
        outputs = []
        for name in task.augmentations:
            image = small if name == "none" else offline_augment.parse_op(name)(small)
            image = image_io.to_channels(image, settings.channels)
            outputs.append((name, image_io.encode(image, settings.image_format,
                                                  settings.jpeg_quality)))
    except Exception as err:  # noqa: BLE001 - the per-source boundary: one file never stops a build
        return Processed(task.key, signature, reason=image_io.failure_reason(err))
    return Processed(task.key, signature, info, phash, tuple(outputs))


def init_worker() -> None:
    """Pool initializer: one OpenCV thread per worker process, so N workers use N cores.

    On Linux the worker also asks to be killed when its parent dies: after a `kill -9` of the
    converter, pool workers blocked on their task queue would otherwise linger forever.
    """
    cv2.setNumThreads(1)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # best effort: not every libc exposes prctl
