"""train.distribution: data_parallel gives the same training as one device (JAX on 2 and 4 CPU
devices, TensorFlow on 2, JAX in 2 processes); its checkpoints load anywhere; only process 0
writes; a lost process ends the other with one line; bad settings get one line.

These run in the `parity` session, where every backend is installed."""

import os
import shutil
import signal
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error, flexunet, write_config

from flexunet_k3.distribution import MULTI_PROCESS_VARIABLES, multi_process_requested

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


def test_a_lost_process_ends_the_other_with_one_line(tmp_path, tiny_dataset):
    config = config_for(tmp_path, tiny_dataset, distribution="data_parallel", epochs=500,
                        coordinator_timeout=60)
    first, second = start_processes(config)
    history = tmp_path / "run" / "history.json"
    deadline = time.monotonic() + 300
    while not history.exists() and time.monotonic() < deadline:  # an epoch is done
        time.sleep(0.5)
    second.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = first.communicate(timeout=120)
    assert time.monotonic() - killed < 60
    done = subprocess.CompletedProcess(first.args, first.returncode, "", stderr)
    assert_one_line_error(done, "process 0 of 2 stops", "--resume")
    second.communicate()


@pytest.mark.parametrize("backend, train, env, fragments", [
    ("jax", {"devices": 3}, {"FLEXUNET_CPU_DEVICES": "2"},
     ["train.devices is 3", "sees 2 CPU devices"]),
    ("tensorflow", {"devices": 2}, {}, ["FLEXUNET_CPU_DEVICES=2"]),
    ("jax", {"batch_size": 3}, {"FLEXUNET_CPU_DEVICES": "2"},
     ["train.batch_size is 3", "multiple of 2"]),
    ("torch", {}, {}, ["data_parallel runs on the jax and tensorflow backends"]),
    ("jax", {"coordinator_timeout": 2},
     {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:9", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     ["no coordinator answered at 127.0.0.1:9", "(2 s)"]),
    ("jax", {"coordinator_timeout": 3},
     {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "0"},
     ["the 2 processes did not all join", "(3 s)"]),
    ("tensorflow", {}, {"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:1"]}}'},
     ["several workers", "--backend jax"]),
    ("tensorflow", {}, {"TF_CONFIG": '{"cluster": {"worker": 5}}'},
     ["TF_CONFIG is not TensorFlow's cluster JSON", "unset it"]),
    ("tensorflow", {}, {"TF_CONFIG": ""}, ["TF_CONFIG is not TensorFlow's cluster JSON"]),
    ("jax", {}, {"JAX_NUM_PROCESSES": "\u00b2", "JAX_PROCESS_ID": "0"},
     ["JAX_NUM_PROCESSES is '\u00b2'", "whole number"]),
    ("jax", {"coordinator_timeout": 2},
     {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:99999", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "1"},
     ["JAX_COORDINATOR_ADDRESS is '127.0.0.1:99999'", "port from 1 to 65535"]),
    ("jax", {"coordinator_timeout": 2},
     {"JAX_COORDINATOR_ADDRESS": "nohost:x", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     ["JAX_COORDINATOR_ADDRESS is 'nohost:x'"]),
])
def test_bad_distribution_settings(tmp_path, tiny_dataset, backend, train, env, fragments):
    config = config_for(tmp_path, tiny_dataset, distribution="data_parallel", **train)
    done = subprocess.run(
        ["flexunet", "--backend", backend, "train", "--config", str(config)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )
    assert_one_line_error(done, *fragments)
    assert not (tmp_path / "run").exists()



def test_a_split_smaller_than_the_devices_is_refused_before_writing(tmp_path, tiny_dataset):
    dataset = shutil.copytree(tiny_dataset, tmp_path / "dataset")
    for path in sorted((dataset / "valid" / "images").iterdir())[3:]:
        path.unlink()
        (dataset / "valid" / "masks" / path.name).unlink()
    config = config_for(tmp_path, dataset, distribution="data_parallel")
    done = subprocess.run(["flexunet", "--backend", "jax", "train", "--config", str(config)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FLEXUNET_CPU_DEVICES": "4"})
    assert_one_line_error(done, "the valid split has 3 images, fewer than the 4 devices")
    assert not (tmp_path / "run").exists()

@pytest.mark.parametrize("tasks, several", [("2", True), ("1", False), ("\u00b2", False),
                                            ("two", False)])
def test_a_slurm_task_count_that_is_no_number_is_one_task(monkeypatch, tasks, several):
    monkeypatch.setenv("SLURM_NTASKS", tasks)
    for name in (*MULTI_PROCESS_VARIABLES, "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert multi_process_requested() is several


def test_evaluate_refuses_several_processes(tmp_path, tiny_dataset):
    config = config_for(tmp_path, tiny_dataset, distribution="data_parallel")
    train(config, "jax", "--set", "train.distribution=none", "--set", "train.epochs=1")
    done = subprocess.run(
        ["flexunet", "--backend", "jax", "evaluate", "--config", str(config)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_NUM_PROCESSES": "2"},
    )
    assert_one_line_error(done, "flexunet evaluate runs in one process")


def test_benchmark_devices_reports_per_device_rates_and_scaling(tmp_path, tiny_dataset):
    import json

    config = config_for(tmp_path, tiny_dataset)
    rows_file = tmp_path / "rows.json"
    done = subprocess.run(
        ["flexunet", "benchmark", "--config", str(config), "--backends", "jax,torch",
         "--devices", "1,2", "--batch-size", "2", "--steps", "2", "--warmup", "1",
         "--json", str(rows_file)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "FLEXUNET_CPU_DEVICES": "2", "COLUMNS": "250"},
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(rows_file.read_text())["rows"]
    jax_rows = [row for row in rows if row["case"]["backend"] == "jax"]
    assert [(r["case"]["devices"], r["case"]["batch_size"]) for r in jax_rows] == [(1, 2), (2, 4)]
    assert all(row["train_images_per_s"] > 0 for row in jax_rows)
    assert "2 x" in jax_rows[1]["device"] and "simulated" in jax_rows[1]["device"]
    torch_two = next(row for row in rows if row["case"]["backend"] == "torch"
                     and row["case"]["devices"] == 2)
    assert torch_two["error"].startswith("train.distribution: data_parallel runs on the jax and")
    assert "scaling" in done.stdout and "%" in done.stdout
    # Without --devices, the config's train.distribution holds
    config = config_for(tmp_path / "configured", tiny_dataset, distribution="data_parallel",
                        devices=2)
    done = subprocess.run(
        ["flexunet", "benchmark", "--config", str(config), "--backends", "jax", "--steps", "1",
         "--warmup", "1", "--json", str(rows_file), "--overwrite"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "FLEXUNET_CPU_DEVICES": "2"},
    )
    assert done.returncode == 0, done.stderr
    assert "2 x" in json.loads(rows_file.read_text())["rows"][0]["device"]
