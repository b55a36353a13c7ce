"""`flexunet prepare`: 2D PNG datasets from Decathlon volumes, phantom CT sets, statistics."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flexunet_k3.errors import UserError
from flexunet_k3.interrupt import deferred

from .state import (
    Overrides,
    config_or_defaults,
    console,
    print_warning,
    warnings_as_lines,
)

app = typer.Typer(
    help="Make 2D PNG datasets from Decathlon NIfTI volumes (or a synthetic set); statistics.",
    no_args_is_help=True,
)

Output = Annotated[Path, typer.Option("--output", "-o", help="Folder to write.")]
Seed = Annotated[
    int, typer.Option(help="Random seed (0..4294967295): the same seed gives the same output.")
]


@app.command("msd")
def msd_command(
    source: Annotated[
        Path, typer.Option("--source", "-s", help="Task06_Lung.tar or its extracted folder.")
    ],
    output: Output,
    window: Annotated[
        str, typer.Option(help="Hounsfield window LOW,HIGH mapped to 0..255 (soft tissue); "
                          "-100000 <= LOW < HIGH <= 100000.")
    ] = "-125,225",
    size: Annotated[int, typer.Option(help="Width and height of the PNG slices (16..4096).")] = 512,
    keep_empty: Annotated[
        float, typer.Option(help="Share (0..1) of tumor-free slices to keep.")
    ] = 0.0,
    split: Annotated[
        str, typer.Option(help="Train,valid,test fractions of the patients.")
    ] = "0.7,0.15,0.15",
    seed: Seed = 42,
    mini_test: Annotated[
        int, typer.Option(help="Test slices copied to mini_test (0..10000).")
    ] = 10,
    workers: Annotated[
        int | None,
        typer.Option(help="Cases converted in parallel (1..64; default: min(4, CPUs))."),
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Stop at a bad case instead of skipping it with a warning.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace the files of the dataset this command wrote there before (listed in its "
        "manifest.json); other files stay, and one in the way of a new file is refused."
    )] = False,
) -> None:
    """Slice Decathlon CT volumes into 8-bit PNG image/mask pairs, split by patient."""
    from flexunet_k3.data.msd import prepare_msd

    with warnings.catch_warnings(record=True) as caught:  # shown after the progress bar
        warnings.simplefilter("always", UserWarning)
        try:
            with deferred():  # Ctrl-C between cases
                stats = prepare_msd(
                    source,
                    output,
                    window=_numbers(window, 2, "--window"),
                    size=size,
                    keep_empty=keep_empty,
                    split=_numbers(split, 3, "--split"),
                    seed=seed,
                    mini_test=mini_test,
                    workers=workers,
                    strict=strict,
                    overwrite=overwrite,
                )
        finally:  # before an error too: the skipped cases may be why
            for warning in caught:
                print_warning(warning.message)
    _print_statistics(stats, output)


@app.command("synthetic")
def synthetic_command(
    output: Output,
    cases: Annotated[int, typer.Option(help="Number of phantom CT volumes (1..10000).")] = 12,
    seed: Seed = 42,
    size: Annotated[
        int, typer.Option(help="Width and height of each volume in voxels (32..1024).")
    ] = 256,
    slices: Annotated[
        int, typer.Option(help="Axial slices per volume (4..1024; size x size x slices at most "
                          "2**27 voxels).")
    ] = 48,
    overwrite: Annotated[bool, typer.Option(
        help="Replace dataset.json and volumes of the same names already in the output."
    )] = False,
) -> None:
    """Write a phantom chest CT set with lung tumors in the Decathlon Task06 layout."""
    from flexunet_k3.data.synthetic import write_synthetic_dataset

    with deferred():  # Ctrl-C stops between cases, never while files move in
        ids = write_synthetic_dataset(output, cases, seed, size, slices, overwrite=overwrite)
    written = f"{len(ids)} cases ({ids[0]}..{ids[-1]})" if len(ids) > 1 else f"1 case ({ids[0]})"
    console.print(f"wrote {written} to {output}")
    console.print(f"next: flexunet prepare msd --source {output} --output DATASET")


@app.command("stats")
def stats_command(
    folder: Annotated[Path, typer.Argument(help="A dataset folder (train|valid|test/...).")],
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="A run config whose data.classes the masks are in.",
        show_default="background black, tumor white")] = None,
    overrides: Overrides = None,
) -> None:
    """Recount a dataset folder; rewrite its statistics.json and statistics.png.

    Refused where flexunet did not write them."""
    from flexunet_k3.data.statistics import update_statistics

    classes = config_or_defaults(config, overrides).data.classes
    with warnings_as_lines(), deferred():
        stats = update_statistics(folder, [spec.color for spec in classes])
    _print_statistics(stats, folder)


def _numbers(text: str, count: int, option: str) -> list[float]:
    """Parse "A,B,..." into `count` floats, or stop with one line naming the option."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise UserError(f"{option} {text!r}: need {count} comma-separated numbers")
    return values


def _print_statistics(stats: dict, folder: Path) -> None:
    from flexunet_k3.data.statistics import SPLITS

    table = Table(
        "split", "images", "cases", "tumor pixels", "tumor-free images", title=str(folder)
    )
    for split in SPLITS:
        table.add_row(
            split,
            str(stats["images"][split]),
            str(stats["cases"][split]),
            f"{stats['tumor_pixel_share'][split]:.3%}",
            str(stats["tumor_free_images"][split]),
        )
    table.add_row("mini_test", str(stats["images"]["mini_test"]), "", "", "")
    console.print(table)
    if "tumor_free_slices_dropped" in stats:
        console.print(f"tumor-free slices dropped: {stats['tumor_free_slices_dropped']}")
    if stats.get("cases_without_slices"):
        console.print(f"cases with no slice kept, split by patient for whole-volume work: "
                      f"{', '.join(stats['cases_without_slices'])}")
    for problem in stats.get("skipped_cases", {}).values():
        console.print(f"skipped: {problem}")
