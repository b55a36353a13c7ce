"""Shared fixtures: a tiny PNG dataset of 'patients' and a tiny run config for it."""

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

SIZE = 32
TINY = {
    "model": {
        "image_height": SIZE, "image_width": SIZE, "image_channels": 1,
        "num_layers": 3, "base_filters": 4, "base_kernels": 3, "dropout_rate": 0.0,
    },
    "optimizer": {"learning_rate": 0.01},
    "data": {"dataset": "dataset"},
    "train": {
        "output_dir": "run", "epochs": 2, "batch_size": 4, "num_infer_images": 3,
        "patience": 5, "reducer": {"patience": 1},
    },
}


def write_slices(folder: Path, cases: list[str], slices: int, seed: int) -> None:
    """`{case}_{slice}.png` gray images with a bright disk where the mask is white (255);
    every third slice has no tumor."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for case in cases:
        for index in range(slices):
            radius = 0 if index % 3 == 2 else rng.integers(3, 8)
            cy, cx = rng.integers(8, SIZE - 8, 2)
            mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2).astype(np.uint8) * 255
            image = (rng.integers(0, 80, (SIZE, SIZE)) + (mask > 0) * 150).astype(np.uint8)
            for kind, array in (("images", image), ("masks", mask)):
                (folder / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / kind / f"{case}_{index}.png")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """train (4 cases x 6 slices), valid and test (2 cases x 4 slices) splits."""
    root = tmp_path_factory.mktemp("tiny") / "dataset"
    write_slices(root / "train", ["101", "102", "103", "104"], 6, seed=1)
    write_slices(root / "valid", ["201", "202"], 4, seed=2)
    write_slices(root / "test", ["301", "302"], 4, seed=3)
    return root


def write_config(folder: Path, dataset: Path, **sections) -> Path:
    """A tiny run config in `folder` (its run folder is folder/run); `sections` update TINY."""
    data = {key: dict(value) for key, value in TINY.items()}
    data["data"]["dataset"] = str(dataset)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def tiny_config(tmp_path, tiny_dataset) -> Path:
    return write_config(tmp_path, tiny_dataset)


def flexunet(*args, backend=None, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed `flexunet` console script (optionally on another backend)."""
    env = {**os.environ, **({"KERAS_BACKEND": backend} if backend else {})}
    return subprocess.run(
        ["flexunet", *args], capture_output=True, text=True, timeout=900, env=env, **kwargs
    )


# TensorFlow's C++ logging writes these to stderr (on import, at exit), whatever we do.
BACKEND_NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} \d\d:\d\d|\t)")


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and a single `error: ...` line on stderr (besides backend logging)."""
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not BACKEND_NOISE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_dataset) -> Path:
    """The config of a tiny run trained once (in this process) for evaluate/infer tests."""
    from flexunet_k3.config import load_config
    from flexunet_k3.training import train

    config = write_config(tmp_path_factory.mktemp("trained"), tiny_dataset)
    train(load_config(config))
    return config


@contextlib.contextmanager
def no_hang(seconds: int = 30):
    """Fail with TimeoutError instead of blocking for ever (reading a FIFO nobody writes to)."""

    def stop(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
