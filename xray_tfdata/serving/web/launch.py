"""Start `python -m xray_tfdata.serve` in a child process and wait until it listens.

Used by the browser test and the load benchmark: the real command, the real waitress server,
a free port chosen by the server itself (--port=0, so no race for a port picked beforehand).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from typing import Sequence

_LISTEN = re.compile(r"Serving on (http://[^\s/]+:\d+)/")


class Launched:
    """A running server: `url` ("http://127.0.0.1:PORT"), `lines` (its output so far), `stop()`."""

    def __init__(self, proc: subprocess.Popen, url: str, lines: list[str]) -> None:
        self.proc, self.url, self.lines = proc, url, lines

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code (0 for a clean shutdown)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def output(self) -> str:
        return "".join(self.lines)


def start(model_path: str, flags: Sequence[str] = (), *, cwd: str | None = None,
          env: dict[str, str] | None = None, timeout: float = 180.0) -> Launched:
    """Starts the server on 127.0.0.1 and a free port; returns once it prints its address.

    Raises:
      RuntimeError: the server exited or did not listen within `timeout` (its output attached).
    """
    command = [sys.executable, "-m", "xray_tfdata.serve", f"--model_path={model_path}",
               "--host=127.0.0.1", "--port=0", *flags]
    proc = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    found = threading.Event()

    def pump() -> None:  # keep reading so the pipe never fills and blocks the server
        for line in proc.stdout:
            lines.append(line)
            if _LISTEN.search(line):
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            Launched(proc, "", lines).stop()
            raise RuntimeError(f"the server did not start (exit {proc.returncode}):\n"
                               + "".join(lines)[-3000:])
    url = next(m.group(1) for m in map(_LISTEN.search, lines) if m)
    return Launched(proc, url, lines)


CHROMIUM = "/usr/bin/chromium"  # Debian's chromium and chromium-driver packages
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, and nothing that would reach the network or write outside the fresh profile.
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage")


def headless_chrome(user_data_dir: str | os.PathLike, *, javascript: bool = True,
                    window: tuple[int, int] = (1100, 1250)):
    """A selenium Chrome driver on Debian's Chromium with a fresh profile in `user_data_dir`
    (selenium is imported here: it is in the [web] extra, needed only by tests and tools)."""
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--window-size={window[0]},{window[1]}",
                 f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver
