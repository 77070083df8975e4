"""Converter speed (issue 2): a thin caller of the benchmark tool.

    python benchmarks/convert.py [flags]
is exactly
    python -m xray_tfdata.benchmark --mode=convert [flags]
(see benchmarks/README.md for the flags, the results and how to read them).
"""

import sys

from absl import app

from xray_tfdata import benchmark

if __name__ == "__main__":
    if any(arg.lstrip("-").startswith("mode") for arg in sys.argv[1:]):
        sys.exit(f"{sys.argv[0]} always runs --mode=convert; for another mode run "
                 "python -m xray_tfdata.benchmark --mode=...")
    app.run(benchmark.main, argv=[sys.argv[0], "--mode=convert", *sys.argv[1:]])
