"""Experiments harness for ``gated``: tasks, data, training, comparisons and figures.

Nothing in the core library imports this package (a test enforces it); it needs the ``harness``
extra (numpy, safetensors, tqdm, matplotlib; from a checkout ``pip install -e ".[harness]"``).

Layout:
    config.py      RunConfig = ModelConfig + TaskConfig + OptimConfig + TrainConfig (dataclasses)
    tasks/         TASKS registry: copy, adding, smnist, pmnist, sfmnist, scifar10, brown, kjv
    data/          DATASETS registry: fetch through package registries, checksums, cache
    model.py       input layer -> gated RNN -> readout head
    checkpoint.py  atomic checkpoints (safetensors weights + optimizer/RNG state), the run directory lock
    files.py       atomic writes, JSON / metrics.jsonl reading with errors that name the file
    train.py       the training loop (single process or torchrun DDP)
    compare.py     variant x seed x setting grids, each run a process; markdown table
    launch.py      where a grid's runs execute: subprocesses, submitit's local executor, Slurm
    tensorboard.py the optional TensorBoard sink (``--tensorboard``)
    plots.py       learning curves and gate histograms (matplotlib)
    reproduce.py   ``gated reproduce``: experiment specs (``experiments/*.json``, package data) and checks
    experiments/   the specs behind every number in REPORT.md (``gated reproduce`` reads them)
    mechanism.py   figures for the paper's mechanism claims (refine bands, UGI timescales, Fig. 5)
    demos/         ``gated demo``: the feed-forward gating demonstrations (highway, channel gating, GLU FFN,
                   gated attention)
    bench.py       ``gated bench``: speed and memory against torch.nn (bench_scan.py: the scan cores;
                   bench_options.py: the cell options; bench_common.py: timing and table cells)
    cli.py         ``gated`` command: a table of subcommands (status.py: its exit statuses, install hint)
"""
