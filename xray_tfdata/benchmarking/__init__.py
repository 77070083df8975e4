"""Throughput benchmarks behind `python -m xray_tfdata.benchmark`.

  harness      machine facts, library versions, repeat statistics, peak RSS, tables, JSON lines
  isolate      run one measurement in its own Python process (fair peak memory, fresh TF runtime)
  datasets     cached synthetic sources and records for the benchmarks
  convert_bench  converter images/s at 1..N workers vs the tutorial's cv2 loop
  input_bench    image_dataset_from_directory vs the tutorial loader vs ours (+ ablation)
  train_bench    training images/s fed by real records vs synthetic in-memory batches
  suite        runs the modes, prints tables, writes JSON lines, computes ratios vs targets
  plot         PNG chart of images/s per variant

Nothing here imports TensorFlow at module level except the *_bench measurement functions, so the
entry point can refuse bad flags in well under a second.
"""
