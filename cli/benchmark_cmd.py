"""`flexunet benchmark`: the backends side by side on the configured model."""

from __future__ import annotations

import platform
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flexunet_k3 import progress
from flexunet_k3.backend import BACKENDS, versions
from flexunet_k3.benchmark import (
    JIT_MODES,
    PRECISIONS,
    Case,
    Row,
    check_choices,
    recommendation,
    run_case,
    scaling,
)
from flexunet_k3.config import MAX_BATCH_SIZE, load_config
from flexunet_k3.errors import UserError, is_count, plural
from flexunet_k3.files import check_new_file, write_json

from .state import ConfigOption, Overrides, console


def _split(text: str) -> list[str]:
    """A comma-separated option's values, each once, in their order."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _backend_list(text: str) -> list[str]:
    """--backends: the backends named, each once; `all` stands for every one."""
    return _split(",".join(",".join(BACKENDS) if part == "all" else part for part in _split(text)))


def _fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _table(rows: list[Row], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    parallel = any(row.case.devices for row in rows)
    efficiency = scaling(rows)
    for name in (
        "backend",
        "precision",
        "jit",
        *(("devices", "img/s per device", "scaling") if parallel else ()),
        "batch",
        "train img/s",
        "step ms p50/p90",
        "warm-up s",
        "infer img/s",
        "TFLOP/s",
        "host MB",
        "dev MB",
        "note",
    ):
        table.add_column(
            name, justify="left" if name in ("backend", "precision", "note") else "right"
        )
    for index, row in enumerate(rows):
        c = row.case
        per_device = (
            (str(c.devices),
             _fmt(row.train_images_per_s and row.train_images_per_s / c.devices, 2),
             f"{100 * efficiency[index]:.0f}%" if index in efficiency else "-")
            if parallel else ()
        )
        table.add_row(
            c.backend,
            f"auto ({row.precision})" if c.precision == "auto" and row.precision else c.precision,
            c.jit,
            *per_device,
            str(c.batch_size),
            _fmt(row.train_images_per_s, 2),
            "-"
            if row.step_ms_median is None
            else f"{row.step_ms_median:,.0f} / {row.step_ms_p90:,.0f}",
            _fmt(row.warmup_s),
            _fmt(row.infer_images_per_s, 2),
            _fmt(row.train_tflops, 3),
            _fmt(row.peak_host_mb, 0),
            _fmt(row.peak_device_mb, 0),
            row.error or row.note,
        )
    return table


def _device_counts(text: str, batch: int) -> list[int]:
    """--devices as whole numbers from 1 to 4096 whose global batch stays in range."""
    counts = []
    for part in _split(text) or [""]:
        if not is_count(part) or not 1 <= int(part) <= 4096:
            raise UserError(f"--devices: {part!r} is not a device count from 1 to 4096")
        if batch * int(part) > MAX_BATCH_SIZE:
            raise UserError(f"--devices: {part} devices of {batch} images make a batch over "
                            f"{MAX_BATCH_SIZE}; lower --batch-size")
        counts.append(int(part))
    return list(dict.fromkeys(counts))  # 1 and 01 once


def benchmark(
    config: ConfigOption,
    backends: Annotated[str, typer.Option(
        help="Comma-separated backends, or all: " + ", ".join(BACKENDS) + "."
    )] = "all",
    precision: Annotated[str | None, typer.Option(
        help="Comma-separated: " + ", ".join(PRECISIONS) + ".", show_default="train.precision"
    )] = None,
    jit: Annotated[str | None, typer.Option(
        help="Comma-separated: " + ", ".join(JIT_MODES) + ".", show_default="train.jit"
    )] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, max=MAX_BATCH_SIZE, help="Images per step (per device, with --devices).",
        show_default="train.batch_size"
    )] = None,
    devices: Annotated[str | None, typer.Option(
        help="Comma-separated device counts, e.g. 1,2,4: data parallel on each (JAX and "
        "TensorFlow), the batch per device fixed; reports img/s per device and the scaling "
        "against 1. On a CPU, FLEXUNET_CPU_DEVICES=N splits it into N devices."
    )] = None,
    steps: Annotated[int, typer.Option(min=1, max=100_000, help="Timed training steps.")] = 10,
    warmup: Annotated[
        int, typer.Option(min=1, max=1000, help="Untimed first steps (compile).")
    ] = 3,
    timeout: Annotated[
        float, typer.Option(min=1, max=7 * 86400, help="Seconds allowed per run.")
    ] = 1800,
    json_file: Annotated[
        Path | None, typer.Option("--json", help=(
            "Write the rows as JSON, with the config, its --set overrides and its model and "
            "train sections; each row's case is the backend, precision, jit and batch it ran."))
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --json file.")] = False,
    overrides: Overrides = None,
) -> None:
    """Training and inference images/s, step times, FLOPs and memory per backend/precision/jit."""
    cfg = load_config(config, overrides)
    if json_file is not None:  # refused now, not after the runs
        check_new_file(json_file, overwrite, config, "config to run", "--json")
    batch = batch_size or cfg.train.batch_size
    counts = _device_counts(devices, batch) if devices is not None else [0]
    cases = [
        Case(b, p, j, batch * max(n, 1), steps, warmup, n)
        for b in check_choices(_backend_list(backends), BACKENDS, "--backends")
        for p in check_choices(_split(cfg.train.precision if precision is None else precision),
                               PRECISIONS, "--precision")
        for j in check_choices(_split(cfg.train.jit if jit is None else jit), JIT_MODES, "--jit")
        for n in counts
    ]
    rows = [
        run_case(str(config), overrides or [], case, timeout)
        for case in progress.track(cases, "benchmark runs")
    ]
    m = cfg.model
    title = (
        f"{m.image_height}x{m.image_width}x{m.image_channels}, {m.num_layers} levels, "
        f"base_filters {m.base_filters}, kernels {m.base_kernels[0]}"
        + (f", training steps on {cfg.train.crop_size}x{cfg.train.crop_size} crops"
           if cfg.train.crop_size else "")
    )
    # a log or pipe gets the whole table at its own width, not one squeezed to 80 columns
    wide = console if console.is_terminal else Console(width=1000, markup=False)
    wide.print(_table(rows, title))
    if json_file:
        write_json(
            json_file,
            {
                "config": str(config),
                "overrides": overrides or [],
                "model": m.model_dump(mode="json"),
                "train": cfg.train.model_dump(mode="json"),
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                    "versions": versions(),
                },
                "rows": [asdict(row) for row in rows],
            },
        )
        console.print(f"wrote {json_file}")
    advice = recommendation(rows)
    if advice:
        console.print(advice, highlight=False)
    if not any(row.error is None for row in rows):
        raise UserError(f"no case ran ({plural(len(rows), 'case')}): the table says why")
