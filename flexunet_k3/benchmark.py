"""`flexunet benchmark`: training and inference throughput of the configured model, per backend.

Each (backend, precision, jit) runs in its own subprocess (`python -m flexunet_k3.benchmark`),
because the Keras backend is fixed per process. The worker trains on synthetic tensors of the
config's shapes through `model.fit` (the same compiled model `flexunet train` uses) and times
every step; inference is timed with `predict_on_batch`. A combination that cannot run yields a
row with the reason instead of a result. `auto` precision is resolved in the worker, for its
backend's device; bfloat16 emulated on a CPU without native support runs only a few steps.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field, replace
from typing import get_args

from flexunet_k3.backend import installed_backends
from flexunet_k3.config import Config, TrainConfig
from flexunet_k3.errors import UserError, first_line
from flexunet_k3.precision import NATIVE_BF16_CPU_FLAGS, Device, emulated, resolve_precision

PRECISIONS = get_args(TrainConfig.model_fields["precision"].annotation)
JIT_MODES = get_args(TrainConfig.model_fields["jit"].annotation)


@dataclass
class Case:
    """One benchmark run: what to measure."""

    backend: str
    precision: str
    jit: str
    batch_size: int  # the global batch
    steps: int
    warmup: int
    devices: int = 0  # data parallel on this many devices; 0: train.distribution as configured


@dataclass
class Row:
    """What one run measured; `error` says why a run has no figures."""

    case: Case
    device: str = ""
    precision: str = ""  # the Keras policy it ran under (`auto` resolved)
    note: str = ""
    train_images_per_s: float | None = None
    step_ms_median: float | None = None
    step_ms_p90: float | None = None
    warmup_s: float | None = None
    infer_images_per_s: float | None = None
    peak_host_mb: float | None = None
    peak_device_mb: float | None = None
    gflop_per_image: float | None = None
    train_tflops: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def forward_flops(model) -> int:
    """Multiply-adds x 2 of every convolution in one forward pass of one image."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            height, width, channels = layer.input.shape[1:]
        elif isinstance(layer, keras.layers.Conv2D):
            height, width = layer.output.shape[1:3]
            channels = layer.input.shape[-1]
        else:
            continue
        kh, kw = layer.kernel_size
        total += 2 * height * width * kh * kw * channels * layer.filters
    return total


def _device_peak_mb(backend: str) -> float | None:
    """Peak accelerator memory where the backend reports it (None on CPU)."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    elif backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20
    else:
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def plan(case: Case, device: Device) -> tuple[Case, str, str]:
    """The case as it runs on `device`, its Keras policy (`auto` resolved) and a note on it.

    Emulated bfloat16 is 10-100x slower than native: it gets 1 warm-up and 2 timed steps at most.
    """
    precision, why = resolve_precision(case.precision, device)
    note = f"auto: {why}" if case.precision == "auto" else ""
    if emulated(precision, device):
        case = replace(case, steps=min(case.steps, 2), warmup=min(case.warmup, 1))
        flags = " or ".join(NATIVE_BF16_CPU_FLAGS)
        note = f"emulated: this CPU has no {flags}; {case.steps} timed steps"
    return case, precision, note


def recommendation(rows: list[Row]) -> str | None:
    """One line naming the fastest backend and precision by train img/s on one device; None
    for one such row or none measured."""
    rows = [row for row in rows if row.case.devices <= 1]
    measured = [row for row in rows if row.train_images_per_s is not None]
    if len(rows) < 2 or not measured:
        return None
    best = max(measured, key=lambda row: row.train_images_per_s)
    c = best.case
    return (
        f"fastest on this machine: backend {c.backend}, precision {best.precision or c.precision}"
        f", jit {c.jit} ({best.train_images_per_s:,.2f} train img/s)"
    )


def measure(config: Config, case: Case) -> Row:
    """Run one case in this process (the backend must already be selected)."""
    import keras
    import numpy as np

    from flexunet_k3.backend import devices
    from flexunet_k3.model_io import compile_model
    from flexunet_k3.models import build_model
    from flexunet_k3.precision import this_machine
    from flexunet_k3.training import set_up_process

    case, precision, note = plan(case, this_machine())
    config = config.model_copy(deep=True)
    config.train.jit = case.jit
    placement = distribute(config, case)
    set_up_process(config, precision)
    model = compile_model(config)
    x, y = synthetic_batch(config, case.batch_size, config.train_size())
    steps = step_times(model, x, y, case.warmup + case.steps)
    timed = steps[case.warmup :]
    x, _ = synthetic_batch(config, case.batch_size)  # inference takes whole images
    infer_times = []
    for i in range(case.warmup + case.steps):
        begin = time.perf_counter()
        keras.ops.convert_to_numpy(model.predict_on_batch(x))
        if i >= case.warmup:
            infer_times.append(time.perf_counter() - begin)
    # a model trained on crops takes any size: its FLOPs are counted on a whole-image twin
    flops = forward_flops(build_model(config.model) if config.train.crop_size else model)
    m = config.model
    crop_share = math.prod(config.train_size()) / (m.image_height * m.image_width)
    train_rate = case.batch_size / float(np.median(timed))
    return Row(
        case=case,
        device=_device_label(placement.device_count, _default_device(devices())),
        precision=precision,
        note=note,
        train_images_per_s=train_rate,
        step_ms_median=1000 * float(np.median(timed)),
        step_ms_p90=1000 * _percentile(list(timed), 0.9),
        warmup_s=float(steps[: case.warmup].sum()),
        infer_images_per_s=case.batch_size / float(np.median(infer_times)),
        peak_host_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_device_mb=_device_peak_mb(case.backend),
        gflop_per_image=flops / 1e9,
        train_tflops=3 * flops * crop_share * train_rate / 1e12,
    )


def synthetic_batch(config: Config, batch_size: int, size: tuple[int, int] | None = None):
    """A random float32 image batch and integer class maps of the config's shapes, or of
    `size` (height, width): config.train_size() for what a training step sees."""
    import numpy as np

    m = config.model
    height, width = size or (m.image_height, m.image_width)
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, height, width, m.image_channels), "float32")
    return x, rng.integers(0, m.num_classes, (batch_size, height, width))


def step_times(model, x, y, steps: int):
    """Seconds of each of `steps` `model.fit` steps on the same batch (no host-side data cost)."""
    import keras
    import numpy as np

    stamps: list[float] = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step on asynchronous backends
            stamps.append(time.perf_counter())

    data = ((x, y) for _ in range(steps))
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[StepTimer()])
    return np.diff([start, *stamps])


def _default_device(found: list[str]) -> str:
    """The device the backend runs a model on by itself: its first accelerator, else its
    first CPU."""
    return ([name for name in found if "cpu" not in name.lower()] or found)[0]


def _device_label(count: int, device: str) -> str:
    """The device a row ran on; `N x` it for data parallelism, marked where the CPU was split
    (FLEXUNET_CPU_DEVICES)."""
    from flexunet_k3.distribution import CPU_DEVICES

    if count < 2:
        return device
    simulated = " (simulated CPU devices)" if os.environ.get(CPU_DEVICES) else ""
    return f"{count} x {device}{simulated}"


def distribute(config: Config, case: Case):
    """Set this process up for `case`: data parallel on `case.devices` devices (one: none, the
    baseline), or train.distribution as configured where `case.devices` is 0; both steps take
    the case's batch. Returns the placement."""
    from flexunet_k3.distribution import start

    if case.devices:
        config.train.distribution = "data_parallel" if case.devices > 1 else "none"
        config.train.devices = case.devices
    config.train.batch_size = config.infer.batch_size = case.batch_size
    return start(config, case.backend, "flexunet benchmark")


def scaling(rows: list[Row]) -> dict[int, float]:
    """Per row (by index) with `devices`: its train img/s over `devices` times that of the
    one-device row of the same backend, precision and jit (1.0: linear scaling)."""
    single = {
        (row.case.backend, row.case.precision, row.case.jit): row.train_images_per_s
        for row in rows if row.case.devices == 1 and row.train_images_per_s
    }
    return {
        index: row.train_images_per_s / (row.case.devices * base)
        for index, row in enumerate(rows)
        if row.case.devices and row.train_images_per_s
        and (base := single.get((row.case.backend, row.case.precision, row.case.jit)))
    }


def run_case(config_path: str, overrides: list[str], case: Case, timeout: float) -> Row:
    """Run one case in a subprocess under its backend; errors become a row with the reason."""
    if case.backend not in installed_backends():
        return Row(case=case, error=f"{case.backend} is not installed")
    command = [sys.executable, "-m", "flexunet_k3.benchmark", config_path, json.dumps(asdict(case))]
    command += overrides
    env = {**os.environ, "KERAS_BACKEND": case.backend}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Row(case=case, error=f"timed out after {timeout:.0f} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Row(case=case, error=textwrap.shorten(reason, 400, placeholder=" ..."))
    data = json.loads(lines[-1])
    data["case"] = Case(**data["case"])  # as it ran: fewer steps for emulated bfloat16
    return Row(**data)


def _worker(argv: list[str]) -> None:
    """Subprocess entry: `python -m flexunet_k3.benchmark CONFIG CASE_JSON [overrides...]`."""
    from flexunet_k3.backend import select_backend
    from flexunet_k3.config import load_config

    config_path, case_json, *overrides = argv
    case = Case(**json.loads(case_json))
    select_backend(case.backend)
    config = load_config(config_path, overrides)
    try:
        row = measure(config, case)
    except Exception as exc:  # a precision or jit mode the backend cannot run: report, not crash
        error = str(exc) if isinstance(exc, UserError) else first_line(exc, typed=True)
        row = Row(case=case, error=error)
    print(json.dumps(asdict(row)), flush=True)


def check_choices(values: list[str], allowed: tuple[str, ...], option: str) -> list[str]:
    """Validate a comma-separated option's values; UserError naming the bad one."""
    if not values:
        raise UserError(f"{option}: no values; choose from {', '.join(allowed)}")
    for value in values:
        if value not in allowed:
            raise UserError(f"{option}: unknown value {value!r}; choose from {', '.join(allowed)}")
    return values


if __name__ == "__main__":
    _worker(sys.argv[1:])
