"""Where a training step's time goes: Keras' torch backend next to the plain-PyTorch reference.

    python benchmarks/torch_profile.py --config configs/cpu-benchmark.yaml --precision float32

Runs a few training steps of each under torch.profiler (same model, batch and loss as
benchmarks/torch_reference.py) and prints each one's operators sorted by their own CPU time.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch_reference import TorchFlexUNet  # a sibling script

from flexunet_k3.backend import select_backend
from flexunet_k3.config import load_config


def profile_steps(step, steps: int, title: str, rows: int) -> None:
    for _ in range(2):  # warm-up
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(f"\n== {title}: {steps} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    select_backend("torch")
    import keras

    from flexunet_k3.model_io import compile_model

    config = load_config(args.config, args.overrides)
    m = config.model
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, m.image_height, m.image_width, m.image_channels), "float32")
    y = rng.integers(0, m.num_classes, (args.batch_size, m.image_height, m.image_width))

    keras.mixed_precision.set_global_policy(args.precision)
    model = compile_model(config)
    profile_steps(lambda: model.train_on_batch(x, y), args.steps, "Keras torch backend", args.rows)

    reference = TorchFlexUNet(m).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(reference.parameters(), lr=config.optimizer.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    ty = torch.from_numpy(y)
    bf16 = args.precision == "mixed_bfloat16"

    def reference_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(reference(tx).float(), ty)
        loss.backward()
        optimizer.step()

    profile_steps(reference_step, args.steps, "plain PyTorch", args.rows)


if __name__ == "__main__":
    main()
