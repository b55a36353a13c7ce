"""Loader throughput and memory on one CPU core.

    python benchmarks/loader_benchmark.py --images 800            # makes a synthetic folder
    python benchmarks/loader_benchmark.py --folder dataset/Lung-Tumor/train

Reports images/s for the uncached loader, the memory-cached loader and the cached loader with
every augmentation on, and the peak traced memory of one uncached pass over 200 vs 800 images.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from flexunet_k3.config import AugmentConfig  # noqa: E402
from flexunet_k3.data.augment import Augmenter  # noqa: E402
from flexunet_k3.data.dataset import SegmentationDataset  # noqa: E402
from flexunet_k3.data.images import pair_files  # noqa: E402
from flexunet_k3.progress import configure  # noqa: E402

COLORS = [(0, 0, 0), (255, 255, 255)]
ALL_ON = AugmentConfig(
    enabled=True,
    hflip=True,
    vflip=True,
    rotation_angles=[-10, 10],
    shrink_ratios=[0.8, 0.9],
    shear=0.1,
    elastic_alpha=1300,
    elastic_sigma=8,
    brightness=0.1,
    contrast=0.1,
)


def ct_like(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth gray 'slice' (noise upsampled inside an elliptic body) and a blob mask."""
    coarse = Image.fromarray(rng.integers(40, 200, (32, 32), dtype=np.uint8))
    texture = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))
    y, x = (axis / size - 0.5 for axis in np.ogrid[:size, :size])
    body = (x / 0.45) ** 2 + (y / 0.35) ** 2 < 1
    cy, cx = rng.uniform(-0.2, 0.2, 2)
    tumor = (x - cx) ** 2 + (y - cy) ** 2 < rng.uniform(0.01, 0.05) ** 2
    image = np.where(body, texture, 0).astype(np.uint8)
    image[tumor] = 230
    return image, (tumor * 255).astype(np.uint8)


def make_folder(root: Path, count: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for index in range(count):
        image, mask = ct_like(rng, size)
        Image.fromarray(image).save(root / "images" / f"{index:05d}_0.png")
        Image.fromarray(mask).save(root / "masks" / f"{index:05d}_0.png")
    return root


def images_per_second(dataset: SegmentationDataset, min_images: int) -> float:
    """Iterate whole epochs until at least `min_images` were served."""
    served, start = 0, time.perf_counter()
    while served < min_images:
        for index in range(len(dataset)):
            served += len(dataset[index][1])
        dataset.on_epoch_end()
    return served / (time.perf_counter() - start)


def peak_memory_mib(pairs, args) -> float:
    """Peak traced memory (numpy buffers included) of one uncached pass."""
    tracemalloc.start()
    dataset = SegmentationDataset(pairs, (args.size, args.size), args.channels, COLORS, args.batch)
    for index in range(len(dataset)):
        dataset[index]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800, help="images to make (no --folder)")
    parser.add_argument("--folder", type=Path, help="a prepared split with images/ and masks/")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    configure(quiet=True)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or make_folder(Path(tmp), args.images, args.size)
        pairs = pair_files(folder / "images", folder / "masks")
        shape = (args.size, args.size)
        print(f"{len(pairs)} pairs, {args.size}x{args.size}x{args.channels}, batch {args.batch}")

        def dataset(**kwargs):
            return SegmentationDataset(pairs, shape, args.channels, COLORS, args.batch, **kwargs)

        print(f"uncached:        {images_per_second(dataset(), len(pairs)):7.1f} images/s")
        start = time.perf_counter()
        cached = dataset(cache="memory", shuffle=True)
        fill = len(pairs) / (time.perf_counter() - start)
        print(f"filling cache:   {fill:7.1f} images/s")
        print(f"cached:          {images_per_second(cached, 2 * len(pairs)):7.1f} images/s")
        cached.augmenter = Augmenter(ALL_ON, seed=0)
        print(f"cached+augment:  {images_per_second(cached, len(pairs)):7.1f} images/s")
        for count in (200, 800):
            if count <= len(pairs):
                peak = peak_memory_mib(pairs[:count], args)
                print(f"peak memory, one uncached pass over {count} images: {peak:.1f} MiB")


if __name__ == "__main__":
    main()
