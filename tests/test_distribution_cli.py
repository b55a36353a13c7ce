"""The commands around train.distribution: a lost process ends the other with one line; bad
settings, environment variables and splits get one line before anything is written; evaluate
refuses several processes; `benchmark --devices` reports per-device rates and the scaling.

These run in the `parity` session, where every backend is installed (the helpers are
test_distribution.py's)."""

import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import assert_one_line_error
from test_distribution import config_for, free_port, start_processes, train

from flexunet_k3.distribution import MULTI_PROCESS_VARIABLES, multi_process_requested

pytestmark = pytest.mark.parity


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
