"""The converter's one decode pass: every source read and encoded once, results appended to the spill.

Runs in-process for one worker, else in a spawn-context pool whose workers import only
sources.py (never TensorFlow). Sources already in the spill with unchanged size, mtime and
sha256 are reused, which is how a killed conversion resumes. Output never depends on worker count or order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import multiprocessing
import sys
import types
from typing import Iterator, Sequence

import cv2
from absl import logging

from xray_tfdata import console, files, paths
from xray_tfdata.records import sources
from xray_tfdata.records.conversion_state import Spill, SpillEntry


# URL sources read ahead by the parent per window: bounds the bytes held for the pool.
REMOTE_WINDOW = 256


def _with_bytes(task: sources.Task) -> sources.Task:
    """A URL source with its bytes and signature read here (see sources.Task); a local one as is.

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


def _process(tasks: Sequence[sources.Task], workers: int, settings: sources.ProcessSettings
             ) -> Iterator[sources.Processed]:
    workers = min(workers, len(tasks))
    remote = any(paths.is_url(t.path) for t in tasks)
    if workers <= 1:
        # In-process: no pickling, no pool start-up; same function, so same bytes. One OpenCV
        # thread, as in a pool worker, so --num_workers=1 really means one core.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for task in tasks:
                yield sources.process_source(_with_bytes(task), settings)
        finally:
            cv2.setNumThreads(threads)
        return
    # spawn (not fork): the parent holds TensorFlow's threads and state, which fork would copy
    # unsafely. Workers import sources.py, which never imports TensorFlow. A futures executor,
    # not multiprocessing.Pool: when the OS kills a worker (out of memory), Pool.imap waits
    # forever for its lost task; the executor raises BrokenProcessPool, which becomes WorkerDied.
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(tasks) // (workers * 8)))
    work = functools.partial(sources.process_source, settings=settings)
    window = REMOTE_WINDOW if remote else len(tasks)
    with concurrent.futures.ProcessPoolExecutor(workers, ctx, initializer=sources.init_worker
                                                ) as pool:
        try:
            for start in range(0, len(tasks), window):
                batch = [_with_bytes(t) for t in tasks[start:start + window]]
                with main_module_hidden():  # the executor starts its workers on first submit
                    results = pool.map(work, batch, chunksize=chunk)
                yield from results
        except concurrent.futures.process.BrokenProcessPool as err:
            raise WorkerDied(
                f"A converter worker process died (killed by the OS, most often for lack of "
                f"memory, with {workers} workers). Everything converted so far is kept: rerun "
                f"the same command to resume, with fewer --num_workers (now {workers}) or a "
                f"lower --max_pixels if memory is short.") from err


class WorkerDied(RuntimeError):
    """A pool worker was killed mid-task; the spill keeps what finished, a rerun resumes."""


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Starts spawn workers without re-importing the caller's __main__.

    spawn re-runs the parent's main module (script, notebook kernel, `-m` entry) in every worker
    so that functions defined there can be unpickled. Ours live in sources.py, and a main module
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
    return (entry.info is not None and entry.signature == sources.file_signature(path)
            and files.sha256_file(path) == entry.info.sha256)


def run_pass(tasks: list[sources.Task], spill: Spill, workers: int,
             settings: sources.ProcessSettings, progress: bool
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
