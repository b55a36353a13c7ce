"""`flexunet train` against `flexunet benchmark`, side by side in one run.

    python benchmarks/train_loop.py --config configs/cpu-benchmark.yaml \
        --backends tensorflow,torch --precision float32,mixed_bfloat16

For each backend and precision, one after the other: `flexunet benchmark` (the bare compiled
step on one in-memory batch), then `flexunet train` on the config's data (train.epochs epochs
of train.steps_per_epoch steps, validation, checkpoints, curves and epoch-change inference
included), whose img/s per epoch come from history.json. Epoch 1 includes compilation, so the
ratio train / benchmark uses the median of the later epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(command: list[str], backend: str) -> None:
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--backends", default="tensorflow")
    parser.add_argument("--precision", default="float32,mixed_bfloat16")
    parser.add_argument("--steps", type=int, default=10, help="benchmark's timed steps")
    parser.add_argument("--set", action="append", default=[], help="config override, repeatable")
    args = parser.parse_args()
    overrides = [part for item in args.set for part in ("--set", item)]
    print("| backend | precision | benchmark img/s | train img/s per epoch | train / benchmark |")
    print("| --- | --- | ---: | --- | ---: |", flush=True)
    with tempfile.TemporaryDirectory(prefix="flexunet-loop-") as scratch:
        for backend in args.backends.split(","):
            for precision in args.precision.split(","):
                rows = Path(scratch) / f"bench-{backend}-{precision}.json"
                run([
                    "flexunet", "--quiet", "benchmark", "--config", args.config,
                    "--backends", backend, "--precision", precision,
                    "--steps", str(args.steps), "--json", str(rows), *overrides,
                ], backend)
                bench = json.loads(rows.read_text())["rows"][0]["train_images_per_s"]
                output = Path(scratch) / f"run-{backend}-{precision}"
                run([
                    "flexunet", "--quiet", "train", "--config", args.config,
                    "--set", f"train.precision={precision}", "--set", f"train.output_dir={output}",
                    *overrides,
                ], backend)
                history = json.loads((output / "history.json").read_text())["history"]
                epochs = history["images_per_s"]
                loop = statistics.median(epochs[1:] or epochs)
                shown = ", ".join(f"{rate:.2f}" for rate in epochs)
                print(
                    f"| {backend} | {precision} | {bench:.2f} | {shown} | {loop / bench:.0%} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
