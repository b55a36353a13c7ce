"""The same weights and input give the same outputs on TensorFlow, JAX and PyTorch, and a model
saved under each backend loads under each other and predicts the same."""

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import flexunet, write_config

from flexunet_k3.backend import BACKENDS

WORKER = Path(__file__).with_name("parity_worker.py")
NAMES = ("plain", "batchnorm_dilated", "sigmoid_dilated")
TOLERANCE = 1e-4

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """The worker under each backend, the three at once: each saves its models, then loads the
    others' (each mostly waits on one thread: starting Python, importing its backend, JAX
    compiling its initializers). One that fails stops the others."""
    folder = tmp_path_factory.mktemp("parity")
    logs = {backend: (folder / f"{backend}.log").open("w") for backend in BACKENDS}
    workers = {
        backend: subprocess.Popen(
            [sys.executable, str(WORKER), str(folder)],
            env={**os.environ, "KERAS_BACKEND": backend},
            stdout=subprocess.DEVNULL, stderr=logs[backend],
        )
        for backend in BACKENDS
    }
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        codes = [worker.poll() for worker in workers.values()]
        if None not in codes or any(codes):  # all done, or one failed
            break
        time.sleep(0.2)
    for worker in workers.values():
        if worker.poll() is None:
            worker.kill()  # exit code -9
        worker.wait()
    failed = []
    for backend, worker in workers.items():
        logs[backend].close()
        if worker.returncode:
            stderr = Path(logs[backend].name).read_text()[-3000:]
            failed.append(f"{backend} worker, exit code {worker.returncode}:\n{stderr}")
    assert not failed, "\n".join(failed)
    return folder


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("a, b", list(itertools.combinations(BACKENDS, 2)))
def test_same_weights_same_outputs(outputs, name, a, b):
    first, second = (np.load(outputs / f"{x}_{name}.npy") for x in (a, b))
    assert first.shape == second.shape
    assert np.abs(first - second).max() < TOLERANCE


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("saved, loaded", list(itertools.permutations(BACKENDS, 2)))
def test_saved_model_loads_under_other_backends(outputs, name, saved, loaded):
    original = np.load(outputs / f"{saved}_{name}.npy")
    again = np.load(outputs / f"{loaded}_from_{saved}_{name}.npy")
    assert np.abs(original - again).max() < TOLERANCE


SAVE_AND_LIST = """
import sys
from flexunet_k3.backend import select_backend
select_backend()
import keras
keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(sys.argv[1])
print(",".join(m for m in ("tensorflow", "jax", "torch") if m in sys.modules))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backend_loads_alone_and_starts_quietly(backend, tmp_path):
    """With all three installed, saving a model under JAX or PyTorch does not import tensorflow
    (Keras' saving would), and TensorFlow's C++ start-up lines stay off stderr. (jax is
    imported by `import keras` itself wherever it is installed.)"""
    env = {**os.environ, "KERAS_BACKEND": backend}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run(
        [sys.executable, "-c", SAVE_AND_LIST, str(tmp_path / "model.keras")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported = done.stdout.strip().split(",")
    assert backend in imported and ("tensorflow" in imported) == (backend == "tensorflow")
    assert "absl::InitializeLog" not in done.stderr and "I0000" not in done.stderr, done.stderr


@pytest.mark.parametrize("resumed_on", ["tensorflow", "jax"])
def test_a_run_trained_on_torch_resumes_on_another_backend(resumed_on, tmp_path, tiny_dataset):
    """Keras' torch backend saves its optimizer under its own module, which runs on torch only."""
    config = write_config(tmp_path, tiny_dataset, train={"epochs": 1, "epoch_change_infer": False})
    done = flexunet("train", "--config", str(config), backend="torch")
    assert done.returncode == 0, done.stderr[-3000:]
    done = flexunet("train", "--config", str(config), "--resume", "--set", "train.epochs=2",
                    backend=resumed_on)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "history.json").read_text())["epoch"] == 2
