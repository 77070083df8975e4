"""Input-pipeline comparison and ablation (issue 3): a thin caller of the benchmark tool.

    python benchmarks/input_pipeline.py [flags]
is exactly
    python -m xray_tfdata.benchmark --mode=input [flags]
(see benchmarks/README.md for the flags, the results and how to read them).
"""

import sys

from absl import app

from xray_tfdata import benchmark

if __name__ == "__main__":
    if any(arg.lstrip("-").startswith("mode") for arg in sys.argv[1:]):
        sys.exit(f"{sys.argv[0]} always runs --mode=input; for another mode run "
                 "python -m xray_tfdata.benchmark --mode=...")
    app.run(benchmark.main, argv=[sys.argv[0], "--mode=input", *sys.argv[1:]])
