"""Input-pipeline comparison and ablation (issue 3): a thin caller of the benchmark tool.

    python benchmarks/input_pipeline.py [flags]
is exactly
    python -m xray_tfdata.benchmark --mode=input [flags]
(see benchmarks/README.md for the flags, the results and how to read them).
"""

from xray_tfdata import benchmark

if __name__ == "__main__":
    benchmark.run_with_mode("input")
