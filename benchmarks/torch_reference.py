"""FlexUNet written directly in PyTorch, timed side by side with Keras' torch backend.

    python benchmarks/torch_reference.py --config configs/lung.yaml --batch-size 4 \
        --set model.image_height=256 --set model.image_width=256 --set model.num_layers=6

Same architecture (the level schedule of ModelConfig.levels, checked by parameter
count), same loss (pixel cross-entropy) and optimizer (Adam), same synthetic batch. It runs
the reference in this process, then `flexunet benchmark`'s torch case in a subprocess, and
prints both with their ratio. Precisions: float32 and mixed_bfloat16 (torch.autocast).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from flexunet_k3.benchmark import Case, run_case
from flexunet_k3.config import ModelConfig, load_config


def conv(cin: int, level: dict, activation: bool = True) -> nn.Module:
    kh, kw = level["kernel_size"]
    dh, dw = level["dilation_rate"]
    padding = (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    layer = nn.Conv2d(cin, level["filters"], (kh, kw), padding=padding, dilation=(dh, dw))
    return nn.Sequential(layer, nn.ReLU()) if activation else layer


def block(cin: int, level: dict, batchnorm: bool) -> nn.Sequential:
    """Conv-(BN)-Dropout-Conv-(BN), as the Keras model."""
    f = level["filters"]
    parts = [conv(cin, level)]
    parts += [nn.BatchNorm2d(f)] if batchnorm else []
    parts += [nn.Dropout(level["dropout"]), conv(f, level)]
    parts += [nn.BatchNorm2d(f)] if batchnorm else []
    return nn.Sequential(*parts)


class TorchFlexUNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        levels = config.levels()
        self.down = nn.ModuleList()
        cin = config.image_channels
        for level in levels:
            self.down.append(block(cin, level, config.normalization))
            cin = level["filters"]
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for level in reversed(levels[:-1]):
            f = level["filters"]
            self.up.append(nn.ConvTranspose2d(cin, f, 2, stride=2))
            self.merge.append(block(2 * f, level, config.normalization))
            cin = f
        self.head = nn.Conv2d(cin, config.num_classes, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        skips = []
        for i, down in enumerate(self.down):
            x = down(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)  # logits; the loss applies log-softmax


def measure(config: ModelConfig, precision: str, batch: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = TorchFlexUNet(config).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(
        rng.random(
            (batch, config.image_channels, config.image_height, config.image_width), "float32"
        )
    ).to(memory_format=torch.channels_last)
    y = torch.from_numpy(
        rng.integers(0, config.num_classes, (batch, config.image_height, config.image_width))
    )
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "mixed_bfloat16")
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        optimizer.step()
        float(loss)
        times.append(time.perf_counter() - start)
    median = float(np.median(times[warmup:]))
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images_per_s": batch / median,
        "step_ms_median": 1000 * median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="float32,mixed_bfloat16")
    parser.add_argument("--json")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    results = []
    for precision in args.precision.split(","):
        reference = measure(config.model, precision, args.batch_size, args.steps, args.warmup)
        case = Case("torch", precision, "auto", args.batch_size, args.steps, args.warmup)
        keras_row = run_case(args.config, args.overrides, case, timeout=3600)
        keras_rate = keras_row.train_images_per_s
        results.append({"precision": precision, "reference": reference, "keras": asdict(keras_row)})
        ratio = f"{keras_rate / reference['train_images_per_s']:.2f}" if keras_rate else "-"
        print(
            f"{precision}: plain PyTorch {reference['train_images_per_s']:.2f} img/s "
            f"({reference['parameters']:,} parameters); Keras torch backend "
            f"{keras_rate or float('nan'):.2f} img/s {keras_row.error or ''}; keras/plain = {ratio}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
