"""Peak memory (max RSS) of `flexunet train` on the lung architecture vs the number of images.

    python benchmarks/train_memory.py                      # 200 and 800 slices, 3 steps each
    KERAS_BACKEND=jax python benchmarks/train_memory.py --images 200 800 --steps 3

Writes synthetic 512x512 image/mask slices, then runs `/usr/bin/time -v flexunet train` with
configs/lung.yaml (8 levels, base_filters 16, kernels 9, batch 2, uncached loader) for one
epoch of --steps steps, checkpoints included, and reports each run's maximum resident set size.
The loader streams batches, so the peak must not grow with the number of images.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LIMIT_GB = 4.3


def write_slices(folder: Path, count: int, seed: int, size: int = 512) -> None:
    """`count` gray slices `{case}_{n}.png` with a bright disk where the mask is white."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True)
    for index in range(count):
        cy, cx = rng.integers(64, size - 64, 2)
        radius = rng.integers(4, 40)
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2).astype(np.uint8) * 255
        image = (rng.integers(0, 90, (size, size)) + (mask > 0) * 120).astype(np.uint8)
        name = f"{index // 50:03d}_{index % 50}.png"
        Image.fromarray(image).save(folder / "images" / name)
        Image.fromarray(mask).save(folder / "masks" / name)


def max_rss_kb(command: list[str]) -> int:
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[200, 800])
    parser.add_argument("--steps", type=int, default=3, help="training steps (batches of 2)")
    parser.add_argument("--set", action="append", default=[], help="config override, repeatable")
    args = parser.parse_args()
    overrides = [part for item in args.set for part in ("--set", item)]
    with tempfile.TemporaryDirectory(prefix="flexunet-memory-") as scratch:
        for count in args.images:
            dataset = Path(scratch) / f"dataset-{count}"
            write_slices(dataset / "train", count, seed=0)
            write_slices(dataset / "valid", 2, seed=1)
            write_slices(dataset / "test", 2, seed=2)
            kb = max_rss_kb([
                "flexunet", "--quiet", "train", "--config", str(REPO / "configs" / "lung.yaml"),
                "--set", f"data.dataset={dataset}", "--set", "data.cache=none",
                "--set", f"train.output_dir={Path(scratch) / f'run-{count}'}",
                "--set", "train.epochs=1", "--set", f"train.steps_per_epoch={args.steps}",
                "--set", f"infer.images_dir={dataset / 'test' / 'images'}", *overrides,
            ])
            gb = kb * 1024 / 1e9
            verdict = "ok" if gb < LIMIT_GB else f"over {LIMIT_GB} GB"
            print(f"{count} training images: max RSS {gb:.2f} GB ({kb} kB) {verdict}", flush=True)


if __name__ == "__main__":
    main()
