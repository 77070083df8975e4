"""What a person sees while a command runs: quiet logs by default, one progress bar per long stage.

By default a command prints what it does, a progress bar for each long stage (count, images/s,
ETA) and a short result; warnings and errors still show. `--verbosity=0` (absl's flag: INFO) or
XRAY_TFDATA_VERBOSE=1 brings back every log record, TensorFlow's C++ start-up lines included.

Imports nothing heavy: the converter's worker processes and flag validation use it before
TensorFlow is loaded.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import time
from typing import IO

VERBOSE_ENV = "XRAY_TFDATA_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def quiet_native_logs() -> None:
    """Silences TensorFlow's C++ INFO/WARNING lines (CUDA probing, oneDNN notices, "Sharding
    callback duration"...) unless verbose. Must run before TensorFlow is imported; the
    environment is inherited by child processes, so a command's workers stay quiet too."""
    if verbose():
        os.environ[VERBOSE_ENV] = "1"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # absl's C++ logging (used by XLA and gRPC) honours this one.
    os.environ.setdefault("GLOG_minloglevel", "2")


# TensorFlow's C++ logs before absl::InitializeLog() ignore TF_CPP_MIN_LOG_LEVEL (abseil-cpp#1718,
# still open), so in quiet mode a command's native stderr passes through a filter process: it drops
# native INFO/WARNING records, that preamble, and the two ERROR records every CPU-only start-up
# prints (no CUDA driver; a NodeDef attribute newer than the runtime). Everything else, fatal
# checks included, goes through. A separate process, not a thread: if the command aborts, the
# filter still reads to the end of the pipe, so the last lines before a crash are never lost.
_NATIVE_NOISE = (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called",
    r"^[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\]",
    r"^E\d{4} [\d:.]+ +\d+ (cuda_platform|cuda_driver|cuda_diagnostics|"
    r"cuda_executor|node_def_util)\.cc:\d+\]",
    # CPU-only: "oneDNN supports DT_UINT8 only on platforms with AVX-512. Falling back ..."
    r"^E\d{4} [\d:.]+ +\d+ util\.cc:\d+\] oneDNN supports",
)
_FILTER_CODE = """
import os, re, sys
noise = re.compile("|".join(sys.argv[1:]))
out = os.fdopen(2, "wb", buffering=0)
for line in os.fdopen(0, "rb"):
    if not noise.match(line.decode("utf-8", "replace")):
        out.write(line)
"""


def filter_native_stderr() -> bool:
    """Routes this process's native stderr (fd 2) through the noise filter; Python's own
    sys.stderr keeps writing straight to the terminal. Returns True if installed."""
    import subprocess

    if verbose() or os.environ.get("XRAY_TFDATA_STDERR_FILTERED") == str(os.getpid()):
        return False
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
        child = subprocess.Popen([sys.executable, "-c", _FILTER_CODE, *_NATIVE_NOISE],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 close_fds=True)
        os.dup2(child.stdin.fileno(), 2)
        child.stdin.close()  # fd 2 is now the only writer to the filter
    except OSError:
        return False
    # Python-level writes (tracebacks, absl logs, progress bars) bypass the filter.
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8",
                           errors="backslashreplace")
    os.environ["XRAY_TFDATA_STDERR_FILTERED"] = str(os.getpid())
    return True


def quiet_python_logs(verbosity_given: bool) -> None:
    """Sets absl and the `tensorflow` Python logger to WARNING unless the user asked for more."""
    from absl import logging

    if verbose() or verbosity_given:
        return
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)


def say(message: str, stream: IO[str] | None = None) -> None:
    """One line for the person running the command (stderr, like the progress bars), shown even
    when logs are quiet: a resumed run, where results went."""
    stream = stream or sys.stderr
    stream.write(message + "\n")
    stream.flush()


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds}s"


class ProgressBar:
    """`label  120/540 images  [#####.....]  812 images/s  ETA 0:03`, redrawn in place.

    On a terminal the line is redrawn at most every `min_interval` seconds; elsewhere (CI logs,
    a pipe) only the final line is printed, so logs are not flooded with carriage returns.
    """

    def __init__(self, total: int, label: str, unit: str = "images", *,
                 stream: IO[str] | None = None, min_interval: float = 0.2,
                 enabled: bool = True) -> None:
        self.total, self.label, self.unit = max(int(total), 0), label, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._suffix = ""

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        tail = (f"ETA {_duration(left)}" if self.done < self.total
                else f"{_duration(time.perf_counter() - self.start)}")
        text = (f"{self.label}  {self.done}/{self.total} {self.unit}  [{bar}]  "
                f"{rate:,.0f} {self.unit}/s  {tail}")
        return f"{text}  {self._suffix}" if self._suffix else text

    def update(self, n: int = 1, suffix: str | None = None) -> None:
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        if suffix is not None:
            self._suffix = suffix
        now = time.perf_counter()
        if self.enabled and self.interactive and now - self._last_draw >= self.min_interval:
            self._last_draw = now
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()

    def close(self, suffix: str | None = None) -> None:
        """Draws the final line (on any stream) and ends it."""
        if suffix is not None:
            self._suffix = suffix
        if self.enabled:
            self.stream.write(("\r" if self.interactive else "") + self.line() +
                              ("\x1b[K" if self.interactive else "") + "\n")
            self.stream.flush()
