"""Which modules need no backend; shared fixtures: a tiny PNG dataset of 'patients' and a tiny
run config for it."""

import contextlib
import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

# The modules whose tests exercise no Keras backend: config parsing, the CLI where it stops before
# keras is imported, file handling, prepare and synthetic data, statistics, INI import, numpy
# scores. They import nothing that imports keras. Their tests are marked `no_backend`; nox runs
# them once, in the session `tests_no_backend` where no backend is installed, and the per-backend
# sessions leave them out. A test that builds a model, trains, or runs a command that loads the
# backend goes in another module (all tests outside this list run once per backend).
NO_BACKEND_MODULES = frozenset({
    "test_bad_input.py",
    "test_cli.py",
    "test_config.py",
    "test_config_bounds.py",
    "test_config_import.py",
    "test_evaluate_masks.py",
    "test_files.py",
    "test_images.py",
    "test_interrupt.py",
    "test_jax_cache.py",
    "test_memory.py",
    "test_precision.py",
    "test_prepare.py",
    "test_prepare_safety.py",
    "test_volume_scores.py",
})


_OUR_JAX_CACHE = "FLEXUNET_TESTS_JAX_CACHE"  # set where this conftest made the cache folder


def pytest_configure(config):
    # Tests press Ctrl-C, here and in `flexunet` subprocesses: a CI job started in the
    # background (`cmd &` in a script) inherits SIGINT ignored, and so would they.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Under JAX most of the suite's time is XLA compiling tiny models. Without LLVM's
    # optimizations it compiles them 2-3x faster (the parity worker's three models: 9 s against
    # 24; the JAX session 142 s against 90); the tests check results, not speed. A level set
    # beforehand is left as it is.
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    # Many of those compilations are the same tiny models again, here and
    # in each `flexunet` subprocess: they share compilations through a cache kept for this run.
    # JAX reads these when it is imported; subprocesses inherit them; other backends ignore
    # them. Each pytest-xdist worker gets a cache of its own (JAX's writes are not atomic), and
    # a JAX_COMPILATION_CACHE_DIR set beforehand is left as it is.
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") and not os.environ.get(_OUR_JAX_CACHE):
        return
    folder = tempfile.mkdtemp(prefix="flexunet-jax-cache-")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    os.environ.update({
        _OUR_JAX_CACHE: "1",
        "JAX_COMPILATION_CACHE_DIR": folder,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    })


def pytest_ignore_collect(collection_path, config):
    """Under `-m no_backend` (the nox session without a backend) the other test modules, which
    hold no such test, are not even imported: most import keras."""
    name = collection_path.name
    if config.getoption("markexpr") == "no_backend" and name.startswith("test_"):
        if name.endswith(".py") and name not in NO_BACKEND_MODULES:
            return True
    return None


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in NO_BACKEND_MODULES:
            item.add_marker(pytest.mark.no_backend)
        elif item.get_closest_marker("no_backend"):
            raise pytest.UsageError(
                f"{item.nodeid} is marked no_backend but its module is not in "
                "NO_BACKEND_MODULES (tests/conftest.py), so no session would run it"
            )


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
    """`flexunet args`: in this process on this session's backend (KERAS_BACKEND set, no
    `--backend`, no subprocess arguments), else the installed console script in a subprocess
    (optionally on another backend)."""
    here = os.environ.get("KERAS_BACKEND")
    if here and backend in (None, here) and not kwargs and "--backend" not in args:
        return flexunet_here(*args)
    env = {**os.environ, **({"KERAS_BACKEND": backend} if backend else {})}
    return subprocess.run(
        ["flexunet", *args], capture_output=True, text=True, timeout=900, env=env, **kwargs
    )


def flexunet_here(*args: str) -> subprocess.CompletedProcess:
    """`flexunet args` in this process (`flexunet_k3.cli.app.run`, what the console script
    calls), its output captured: no interpreter and backend start-up per call. Warnings are
    filtered as in a new interpreter (not as pytest shows them); the environment and the Keras
    dtype policy a command changes are put back for the tests after it."""
    from flexunet_k3.cli.app import run

    keras = sys.modules.get("keras")
    environment = dict(os.environ)
    policy = keras.mixed_precision.global_policy() if keras else "float32"
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                warnings.catch_warnings():
            warnings.resetwarnings()  # Python's own filters, as the console script has them
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                             ResourceWarning):
                warnings.simplefilter("ignore", category)
            code = run(list(args))
    finally:
        os.environ.clear()
        os.environ.update(environment)
        if "keras" in sys.modules:  # imported now if not before
            sys.modules["keras"].mixed_precision.set_global_policy(policy)
    return subprocess.CompletedProcess(["flexunet", *args], code, stdout.getvalue(),
                                       stderr.getvalue())


# TensorFlow's C++ logging writes these to stderr (on import, at exit), whatever we do.
BACKEND_NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} \d\d:\d\d|\t)")


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and a single `error: ...` line on stderr (besides backend logging)."""
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not BACKEND_NOISE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def read_csv(path: Path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file))


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
