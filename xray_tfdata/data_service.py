r"""Run a tf.data service server: `python -m xray_tfdata.data_service`.

A dispatcher (one per training job) and any number of workers move the input pipeline's read,
decode and host augmentation off the trainer hosts; trainers pass
`--data_service=grpc://DISPATCHER_HOST:PORT`. Stops cleanly on SIGTERM or Ctrl-C.

  python -m xray_tfdata.data_service --role=dispatcher --port=5050 \
      --work_dir=workspace/data_service
  python -m xray_tfdata.data_service --role=worker --port=5051 \
      --dispatcher_address=DISPATCHER_HOST:5050 --worker_address=THIS_HOST:5051

Workers read the records themselves: --records_dir must be the same path (or gs:// URL) on every
worker host as on the trainers.
"""

from __future__ import annotations

from absl import app, flags

from xray_tfdata import cli
from xray_tfdata.inputs import service

cli.define_flags(service.ServerConfig)
flags.mark_flags_as_required(["role", "port"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}; every setting is a --flag.")
    config = cli.settings_from_flags(service.ServerConfig)
    service.run_server(config, on_ready=lambda message: print(message, flush=True))


if __name__ == "__main__":
    cli.run(main)
