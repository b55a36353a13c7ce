"""`flexunet benchmark`'s step against a bare Keras `fit` of the same model and loss, no metrics.

    python benchmarks/bare_fit.py --config configs/cpu-benchmark.yaml \
        --backends tensorflow,jax,torch --precision float32,mixed_bfloat16
    # the issue's setting: the lung model at 128x128, 6 levels, batch 4
    python benchmarks/bare_fit.py --config configs/lung.yaml --set model.image_height=128 \
        --set model.image_width=128 --set model.num_layers=6 --set train.batch_size=4

Each backend and precision runs in its own process (the Keras backend is fixed per process).
There the two models are built from the config under its allocator setting: the one
`flexunet benchmark` compiles (flexunet_k3.model_io.compile_model: loss and training metrics)
and a bare one (same model, optimizer and loss, no metrics). After a warm-up of each, they
alternate `model.fit` rounds of --steps steps on the same in-memory batch, the one that goes
first swapping every round; each round's first step is dropped. img/s is from the median of
all timed steps of a model; the ratio's spread is the lowest and highest of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np


def worker(config_path: str, precision: str, rounds: int, steps: int, overrides: list[str]):
    """Time both models in this process; print one JSON line of per-round step times."""
    from flexunet_k3.backend import select_backend

    select_backend(os.environ["KERAS_BACKEND"])
    from flexunet_k3.benchmark import step_times, synthetic_batch
    from flexunet_k3.config import load_config
    from flexunet_k3.model_io import compile_model
    from flexunet_k3.training import set_up_process

    config = load_config(config_path, overrides)
    set_up_process(config, precision)
    models = {"flexunet": compile_model(config), "bare": compile_model(config, metrics=False)}
    x, y = synthetic_batch(config, config.train.batch_size, config.train_size())
    for model in models.values():
        step_times(model, x, y, 2)  # compilation and first allocations
    times: dict[str, list[list[float]]] = {name: [] for name in models}
    order = list(models)
    for _ in range(rounds):
        for name in order:
            times[name].append(step_times(models[name], x, y, steps + 1)[1:].tolist())
        order.reverse()
    print(json.dumps(times), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/cpu-benchmark.yaml")
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two models")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--set", action="append", default=[], help="config override, repeatable")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.config, args.precision, args.rounds, args.steps, args.set)
        return
    from flexunet_k3.config import load_config

    batch = load_config(args.config, args.set).train.batch_size
    print(f"{cpu_name()}; {args.config} {' '.join(args.set)}; batch {batch}, "
          f"{args.rounds} rounds of {args.steps} steps\n")
    print("| backend | precision | bare fit img/s | flexunet benchmark img/s "
          "| benchmark / bare | per-round range |")
    print("| --- | --- | ---: | ---: | ---: | --- |", flush=True)
    for backend in args.backends.split(","):
        for precision in args.precision.split(","):
            command = [sys.executable, __file__, "--worker", "--config", args.config,
                       "--precision", precision, "--rounds", str(args.rounds),
                       "--steps", str(args.steps),
                       *(part for item in args.set for part in ("--set", item))]
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "KERAS_BACKEND": backend})
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                print(f"| {backend} | {precision} | failed: "
                      f"{(done.stderr.strip().splitlines() or ['no output'])[-1][:150]} | | | |")
                continue
            times = json.loads(lines[-1])
            bare, flex = (batch / np.median(times[name]) for name in ("bare", "flexunet"))
            rounds = zip(times["bare"], times["flexunet"], strict=True)
            ratios = [np.median(b) / np.median(f) for b, f in rounds]
            print(f"| {backend} | {precision} | {bare:.2f} | {flex:.2f} | {flex / bare:.2f}x "
                  f"| {min(ratios):.2f}-{max(ratios):.2f} |", flush=True)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, and its core count."""
    try:
        with open("/proc/cpuinfo") as info:
            name = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
