"""Where a TensorFlow training step's time goes on CPU: its oneDNN primitives, by kind.

    python benchmarks/onednn_profile.py --config configs/cpu-benchmark.yaml \
        --precision mixed_bfloat16

Runs `model.fit` of the configured model (the one `flexunet train` compiles) on one synthetic
batch in a child process with ONEDNN_VERBOSE=profile_exec, and prints, for each of the last
timed steps, its wall time and the summed execution time of the oneDNN primitives that started
inside it (convolutions by direction, reorders, pooling, softmax), then the slowest primitives
of the last step. TensorFlow may run independent primitives at once, so their sum can exceed
the wall time.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(config_path: str, precision: str, steps: int) -> None:
    """Train `steps` steps, printing each step's start and end (epoch ms) to stderr."""
    import keras
    import numpy as np

    from flexunet_k3.config import load_config
    from flexunet_k3.model_io import compile_model
    from flexunet_k3.training import set_up_process

    config = load_config(config_path)
    set_up_process(config, precision)
    model = compile_model(config)
    m, rng = config.model, np.random.default_rng(0)
    x = rng.random((config.train.batch_size, m.image_height, m.image_width, m.image_channels))
    y = rng.integers(0, m.num_classes, x.shape[:3])

    class Stamps(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            print(f"STEP {batch} begin {1000 * time.time():.3f}", file=sys.stderr, flush=True)

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            print(f"STEP {batch} end {1000 * time.time():.3f}", file=sys.stderr, flush=True)

    batches = ((x.astype("float32"), y) for _ in range(steps))
    model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[Stamps()])


def primitives(verbose: Path) -> list[tuple[float, str, str, str, float]]:
    """(start ms, kind, direction, problem, exec ms) of each executed primitive."""
    found = []
    for line in verbose.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 10 and parts[0] == "onednn_verbose" and parts[4] == "exec":
            found.append((float(parts[2]), parts[6], parts[8], parts[-2], float(parts[-1])))
    return found


def report(verbose: Path, stamps: Path, shown_steps: int) -> None:
    steps: dict[int, dict[str, float]] = {}
    for line in stamps.read_text().splitlines():
        if line.startswith("STEP "):
            _, number, edge, ms = line.split()
            steps.setdefault(int(number), {})[edge] = float(ms)
    executed = primitives(verbose)
    last = []
    for number in sorted(steps)[-shown_steps:]:
        begin, end = steps[number]["begin"], steps[number]["end"]
        last = [p for p in executed if begin <= p[0] <= end]
        totals, counts = collections.Counter(), collections.Counter()
        for _, kind, direction, _, ms in last:
            totals[f"{kind} {direction}"] += ms
            counts[f"{kind} {direction}"] += 1
        print(f"step {number}: wall {end - begin:.0f} ms, oneDNN {sum(totals.values()):.0f} ms")
        for key, ms in totals.most_common():
            print(f"  {key:40s} {ms:8.1f} ms  ({counts[key]} calls)")
    print("slowest primitives of the last step:")
    for _, kind, direction, problem, ms in sorted(last, key=lambda p: -p[-1])[:12]:
        print(f"  {ms:7.1f} ms  {kind} {direction} {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--steps", type=int, default=8, help="steps run, warm-up included")
    parser.add_argument("--show", type=int, default=3, help="last steps reported")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.config, args.precision, args.steps)
        return
    env = {
        **os.environ, "KERAS_BACKEND": "tensorflow",
        "ONEDNN_VERBOSE": "profile_exec", "ONEDNN_VERBOSE_TIMESTAMP": "1",
    }
    command = [sys.executable, __file__, "--child", "--config", args.config,
               "--precision", args.precision, "--steps", str(args.steps)]
    with tempfile.TemporaryDirectory(prefix="flexunet-onednn-") as scratch:
        verbose, stamps = Path(scratch) / "verbose.txt", Path(scratch) / "steps.txt"
        with verbose.open("w") as out, stamps.open("w") as err:
            done = subprocess.run(command, stdout=out, stderr=err, env=env)
        if done.returncode != 0:
            sys.exit(f"the training child failed:\n{stamps.read_text()[-3000:]}")
        report(verbose, stamps, args.show)


if __name__ == "__main__":
    main()
