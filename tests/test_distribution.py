"""train.distribution: data_parallel gives the same training as one device (JAX on 2 and 4 CPU
devices, TensorFlow on 2, JAX in 2 processes); its checkpoints load anywhere; only process 0
writes. (A lost process, bad settings and `benchmark --devices`: test_distribution_cli.py.)

These run in the `parity` session, where every backend is installed."""

import os
import socket
import subprocess
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import flexunet, write_config

pytestmark = pytest.mark.parity
RELATIVE = 1e-4
# SGD: Adam divides each update by the root of its running squared gradient, so where a
# gradient is near zero, the order in which devices' parts are summed shows in the weights
# (up to 7e-4 of a layer's largest weight measured on TensorFlow, 2 devices, 2 epochs).
SGD = {"name": "sgd", "learning_rate": 0.1}
NO_DROPOUT = {"dropout_rate": 0.0, "normalization": False}


def config_for(folder: Path, dataset: Path, **train) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"epochs": 2, "batch_size": 4, "epoch_change_infer": False,
                "output_dir": str(folder / "run"), **train}
    return write_config(folder, dataset, model=NO_DROPOUT, optimizer=SGD, train=settings)


def losses(config: Path) -> np.ndarray:
    import json

    history = json.loads((config.parent / "run" / "history.json").read_text())["history"]
    return np.array([history["loss"], history["val_loss"]])


def weights(config: Path) -> list[np.ndarray]:
    """The trained weights in models/last.keras, read without a backend."""
    with zipfile.ZipFile(config.parent / "run" / "models" / "last.keras") as archive:
        archive.extract("model.weights.h5", config.parent)
    arrays = []
    with h5py.File(config.parent / "model.weights.h5") as file:
        file["layers"].visititems(
            lambda name, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def assert_same_training(one: Path, several: Path) -> None:
    np.testing.assert_allclose(losses(several), losses(one), rtol=RELATIVE)
    for a, b in zip(weights(several), weights(one), strict=True):
        np.testing.assert_allclose(a, b, rtol=RELATIVE, atol=RELATIVE * np.abs(b).max())


def train(config: Path, backend: str, *extra: str, **env) -> None:
    done = subprocess.run(
        ["flexunet", "--quiet", "--backend", backend, "train", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=600, env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, tiny_dataset):
    """Each backend's run on its one default device."""
    folder = tmp_path_factory.mktemp("one")
    configs = {}
    for backend in ("jax", "tensorflow"):
        configs[backend] = config_for(folder / backend, tiny_dataset)
        train(configs[backend], backend)
    return configs


@pytest.mark.parametrize("devices", [2, 4])
def test_jax_devices_train_as_one_device(tmp_path, tiny_dataset, one_device, devices):
    config = config_for(tmp_path, tiny_dataset, distribution="data_parallel", devices=devices)
    train(config, "jax", FLEXUNET_CPU_DEVICES=str(devices))
    assert_same_training(one_device["jax"], config)
    # The checkpoint goes on on one device, and predicts under TensorFlow.
    train(config, "jax", "--resume", "--set", "train.epochs=3", "--set",
          "train.distribution=none")
    done = flexunet("--backend", "tensorflow", "evaluate", "--config", str(config),
                    "--set", "train.distribution=none")
    assert done.returncode == 0, done.stderr
    assert (config.parent / "run" / "evaluation.csv").is_file()


def test_tensorflow_devices_train_as_one_device(tmp_path, tiny_dataset, one_device):
    config = config_for(tmp_path, tiny_dataset, distribution="data_parallel", devices=2)
    train(config, "tensorflow", FLEXUNET_CPU_DEVICES="2")
    assert_same_training(one_device["tensorflow"], config)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_processes(config: Path, *extra: str) -> list[subprocess.Popen]:
    """Two `flexunet train` processes on this machine, coordinator on 127.0.0.1; process 1
    is given its own train.output_dir, where it must write nothing."""
    common = {**os.environ, "KERAS_BACKEND": "jax", "JAX_NUM_PROCESSES": "2",
              "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}"}
    return [
        subprocess.Popen(
            ["flexunet", "--quiet", "train", "--config", str(config), *extra,
             *(["--set", f"train.output_dir={config.parent / 'run1'}"] if index else [])],
            env={**common, "JAX_PROCESS_ID": str(index)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for index in range(2)
    ]


def test_jax_processes_train_as_one_and_only_process_0_writes(tmp_path, tiny_dataset,
                                                               one_device):
    config = config_for(tmp_path, tiny_dataset, distribution="data_parallel")
    for process in start_processes(config):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    assert_same_training(one_device["jax"], config)
    assert not (tmp_path / "run1").exists()
