"""tf.data service: the input pipeline's heavy part on separate worker processes or hosts.

A trainer host whose cores cannot decode and augment fast enough for its accelerators moves that
work to tf.data service workers (any CPU machines): one dispatcher hands out work, each worker runs
the read -> parse -> decode -> (host augmentation) part of `pipeline.build_dataset` and streams
batches back over gRPC. The trainer keeps only re-batching, the cast and prefetch.

Processing mode: `distributed_epoch`. The dispatcher splits the dataset's SOURCE (the
`from_tensor_slices` list of shard files) and hands each file to one worker, so one pass over an
evaluation split yields every example exactly once across all workers and all consumers of a job
(`parallel_epochs` would have each worker produce the whole split). Training repeats inside the
dataset (after the shuffle), so the dispatcher keeps handing out the files epoch after epoch.

Jobs: every consumer passing the same `job_name` reads from ONE job, each element going to one
consumer; the replicas (trainer processes) of one training job therefore share the name, and the
train and validation pipelines use different ones (see `job_name`).

Servers: `start_dispatcher` / `start_worker` (in-process, used by tests and by the
`python -m xray_tfdata.data_service` command), `serve_until_signal` (blocks until SIGTERM/SIGINT,
then stops the server cleanly). A dispatcher with a `work_dir` journals its state there
(fault-tolerant mode), so a restarted dispatcher resumes its jobs; workers re-register on their
own.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import signal
import threading
from typing import TYPE_CHECKING, Callable

from absl import logging

from xray_tfdata import errors, paths
from xray_tfdata.errors import ConfigError
from xray_tfdata.settings import setting

if TYPE_CHECKING:
    import tensorflow as tf
# TensorFlow is imported inside the functions: the data_service command validates its flags
# before paying TF's start-up.

PROCESSING_MODE = "distributed_epoch"
ROLES = ("dispatcher", "worker")
_ADDRESS = re.compile(r"^(grpc://)?(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(?P<port>\d{1,5})$")
# A worker that misses heartbeats this long is dropped and its consumers stop waiting for it.
# TF's default is 5 minutes; a minute still rides out a GC pause or a busy host.
DEFAULT_WORKER_TIMEOUT_MS = 60_000


def check_address(field: str, address: str, *, scheme: bool) -> str:
    """Validates HOST:PORT (with `grpc://` when `scheme`); returns it normalised with the scheme
    when `scheme`, else without. Raises ConfigError naming `field`."""
    match = _ADDRESS.match(address or "")
    example = "grpc://10.0.0.5:5050" if scheme else "10.0.0.5:5050"
    if not match or not 0 < int(match["port"]) < 65536 or (scheme and not match.group(1)):
        raise ConfigError(field, address, f"an address like {example} (host, port 1-65535)",
                          "Start a dispatcher with python -m xray_tfdata.data_service "
                          "--role=dispatcher --port=5050 and pass its address.")
    bare = f"{match['host']}:{match['port']}"
    return f"grpc://{bare}" if scheme else bare


def job_name(prefix: str, split: str, training: bool) -> str:
    """One job per (prefix, split, mode): replicas of one run share it, train and eval differ.

    Iterating the SAME dataset object again starts a new pass of the job (TF counts the
    repetitions per dataset), but a newly built dataset under a finished job's name joins that
    finished pass and yields nothing. So an empty prefix gets a random one (right for one trainer
    process); several trainer processes of one run must pass the same explicit prefix, unique to
    the run (e.g. the launcher's job id).
    """
    prefix = prefix or f"xray_tfdata-{secrets.token_hex(4)}"
    return f"{prefix}-{split}-{'train' if training else 'eval'}"


def distribute(dataset: tf.data.Dataset, service: str, name: str) -> tf.data.Dataset:
    """Moves `dataset` (everything before this call) onto the service's workers.

    `service` is `grpc://HOST:PORT` of the dispatcher. The source of `dataset` must be splittable
    (the pipeline starts from `from_tensor_slices` over the shard files).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=PROCESSING_MODE, service=service, job_name=name))


# ---------------------------------------------------------------- servers
def start_dispatcher(port: int = 0, work_dir: str = "",
                     worker_timeout_ms: int = DEFAULT_WORKER_TIMEOUT_MS
                     ) -> tf.data.experimental.service.DispatchServer:
    """Starts a dispatcher on `port` (0 = any free port; read `.target`).

    With `work_dir` the dispatcher journals its state there (fault-tolerant mode): restarted with
    the same work_dir and port, it recovers its datasets and jobs and workers reconnect.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if work_dir:
        tf.io.gfile.makedirs(work_dir)
    config = tf.data.experimental.service.DispatcherConfig(
        port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir),
        worker_timeout_ms=worker_timeout_ms)
    server = tf.data.experimental.service.DispatchServer(config)
    logging.info("tf.data dispatcher at %s (work_dir=%r)", server.target, work_dir)
    return server


def start_worker(dispatcher_address: str, port: int = 0,
                 worker_address: str = "") -> tf.data.experimental.service.WorkerServer:
    """Starts a worker on `port` registered with the dispatcher at HOST:PORT (no grpc://).

    `worker_address` is how trainers reach this worker: "" = localhost:<port>, fine on one
    machine; on a cluster pass a name the trainers resolve, e.g. "worker3.example:5051".
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=dispatcher_address, port=port,
        worker_address=worker_address or None)
    server = tf.data.experimental.service.WorkerServer(config)
    logging.info("tf.data worker on port %d registered with %s", port, dispatcher_address)
    return server


def serve_until_signal(server, on_ready: Callable[[], None] | None = None,
                       poll_s: float = 0.2) -> int:
    """Blocks until SIGTERM or SIGINT, then stops `server`; returns the signal number.

    `server.join()` would block inside C++, where Python cannot run a signal handler, so the main
    thread waits on an Event with a timeout instead and the handler only sets it.
    """
    stop = threading.Event()
    received: list[int] = []

    def handler(signum, frame):  # noqa: ARG001  (signal handler signature)
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_ready is not None:
            on_ready()
        while not stop.wait(poll_s):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        server.stop()
    return received[0] if received else 0


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """One tf.data service server: a dispatcher, or a worker registered with a dispatcher."""

    role: str = setting(help="Which server to run.", allowed=ROLES, flag_default=None)
    port: int = setting(help="Port to listen on (workers: 0 = any free port).",
                        flag_default=None)
    work_dir: str = setting(
        "", "Dispatcher only: directory for its journal (fault tolerance: a restarted "
        "dispatcher with the same --work_dir and --port resumes its jobs). Empty: no journal.")
    dispatcher_address: str = setting("", "Worker only: HOST:PORT of the dispatcher.")
    worker_address: str = setting("", "Worker only: HOST:PORT trainers reach this worker at "
                                  "(default localhost:--port: one machine only).")
    worker_timeout_ms: int = setting(
        DEFAULT_WORKER_TIMEOUT_MS, "Dispatcher only: drop a worker after this long without a "
        "heartbeat.")

    def __post_init__(self) -> None:
        errors.one_of("role", self.role, ROLES)
        paths.check("work_dir", self.work_dir)  # the journal may be a gs:// URL (gfile)
        # A worker may take any free port (0): it reports its address to the dispatcher itself.
        low = 0 if self.role == "worker" else 1
        errors.in_range("port", self.port, low, 65535,
                        allowed=f"an integer port in [{low}, 65535]"
                        + (" (0 = any free port)" if low == 0 else ""))
        errors.positive_int("worker_timeout_ms", self.worker_timeout_ms)
        if self.role == "worker":
            object.__setattr__(self, "dispatcher_address", check_address(
                "dispatcher_address", self.dispatcher_address.removeprefix("grpc://"),
                scheme=False))
            if self.work_dir:
                raise ConfigError("work_dir", self.work_dir, "empty for --role=worker",
                                  "Only the dispatcher keeps a work dir.")
            if self.worker_address:
                check_address("worker_address", self.worker_address, scheme=False)
        else:
            for field in ("dispatcher_address", "worker_address"):
                if getattr(self, field):
                    raise ConfigError(field, getattr(self, field), "empty for role=dispatcher",
                                      "dispatcher_address and worker_address are for workers.")


def run_server(config: ServerConfig, on_ready: Callable[[str], None] | None = None) -> int:
    """Starts the configured server and serves until SIGTERM/SIGINT; returns the signal.

    `on_ready(message)` is called once the server listens (the command prints it).
    """
    if config.role == "dispatcher":
        server = start_dispatcher(config.port, config.work_dir, config.worker_timeout_ms)
        message = (f"tf.data dispatcher listening at grpc://localhost:{config.port}"
                   + (f", journal in {config.work_dir}" if config.work_dir else ""))
    else:
        server = start_worker(config.dispatcher_address, config.port, config.worker_address)
        message = (f"tf.data worker listening on port {config.port or 'any free port'}, "
                   f"registered with {config.dispatcher_address}")
    return serve_until_signal(server, on_ready=(lambda: on_ready(message)) if on_ready else None)
