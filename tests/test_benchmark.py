"""`flexunet benchmark`: FLOPs from the layers, a run on this backend, rows for failures."""

import json
from pathlib import Path

import keras
import pytest
from conftest import flexunet

from flexunet_k3 import benchmark
from flexunet_k3.benchmark import Case, forward_flops, run_case
from flexunet_k3.config import load_config
from flexunet_k3.models import build_model
from flexunet_k3.precision import resolve_precision, this_machine

REPO = Path(__file__).resolve().parents[1]


def test_forward_flops_count_every_convolution():
    model = keras.Sequential([
        keras.Input((8, 8, 2)),
        keras.layers.Conv2D(4, 3, padding="same"),  # 2 x 8*8 outputs x 3*3*2 inputs x 4
        keras.layers.Conv2DTranspose(3, 2, strides=2),  # 2 x 8*8 inputs x 2*2*4 x 3
        keras.layers.MaxPooling2D(),
    ])
    assert forward_flops(model) == 2 * 64 * 9 * 2 * 4 + 2 * 64 * 4 * 4 * 3


def test_forward_flops_of_the_benchmark_model():
    config = load_config(REPO / "configs" / "cpu-benchmark.yaml")
    assert forward_flops(build_model(config.model)) / 1e9 == pytest.approx(26.07, abs=0.005)


def test_a_run_on_this_backend_writes_its_row(tiny_config, tmp_path):
    backend = keras.backend.backend()
    out = tmp_path / "bench.json"
    done = flexunet(
        "--quiet", "benchmark", "--config", str(tiny_config), "--backends", f"{backend},{backend}",
        "--steps", "2", "--warmup", "1", "--json", str(out), "--set", "train.jit=off",
        "--set", "train.crop_size=16",  # steps on 16x16 crops of the 32x32 images
    )
    assert done.returncode == 0, done.stderr
    written = json.loads(out.read_text())
    (row,) = written["rows"]  # a backend named twice runs once
    assert written["overrides"] == ["train.jit=off", "train.crop_size=16"]
    assert written["train"]["crop_size"] == 16  # the settings it ran with, overrides applied
    assert row["error"] is None, row["error"]
    # precision and jit come from the config unless given
    assert (row["case"]["backend"], row["case"]["precision"], row["case"]["jit"]) == (
        backend, "float32", "off"
    )
    assert row["case"]["batch_size"] == 4 and row["train_images_per_s"] > 0
    assert row["train_tflops"] == pytest.approx(
        3 * row["gflop_per_image"] / 4 * row["train_images_per_s"] / 1000
    )
    config = load_config(tiny_config)
    assert row["gflop_per_image"] == pytest.approx(forward_flops(build_model(config.model)) / 1e9)
    assert row["step_ms_p90"] >= row["step_ms_median"] > 0 and row["infer_images_per_s"] > 0
    assert backend in done.stdout and "float32" in done.stdout


def test_auto_runs_as_resolved_and_the_fastest_row_is_recommended(tiny_config, tmp_path):
    backend = keras.backend.backend()
    out = tmp_path / "bench.json"
    done = flexunet(
        "--quiet", "benchmark", "--config", str(tiny_config), "--backends", backend,
        "--precision", "float32,auto", "--steps", "2", "--warmup", "1", "--json", str(out),
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    resolved, why = resolve_precision("auto", this_machine())
    assert [(row["precision"], row["note"]) for row in rows] == [
        ("float32", ""), (resolved, f"auto: {why}")
    ]
    fastest = max(rows, key=lambda row: row["train_images_per_s"])
    assert done.stdout.strip().splitlines()[-1].startswith(
        f"fastest on this machine: backend {backend}, precision {fastest['precision']}, jit auto"
    )


def test_a_case_that_cannot_run_is_a_row_with_the_reason(tiny_config, tmp_path, monkeypatch):
    case = Case(keras.backend.backend(), "float32", "auto", 2, 1, 1)
    missing = run_case(str(tmp_path / "gone.yaml"), [], case, timeout=600)
    assert missing.train_images_per_s is None and "gone.yaml: not found" in missing.error
    monkeypatch.setattr(benchmark, "installed_backends", lambda: [])
    absent = run_case(str(tiny_config), [], case, timeout=600)
    assert absent.error == f"{case.backend} is not installed"
    done = flexunet("benchmark", "--config", str(tiny_config), "--backends", "torch", "--devices",
                    "2", "--steps", "1", "--warmup", "1")  # torch: not installed, or no devices
    assert done.returncode == 2 and "error: no case ran (1 case): the table says why" in done.stderr
    assert "UserError" not in done.stdout
