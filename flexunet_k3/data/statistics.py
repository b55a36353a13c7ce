"""Statistics of a 2D dataset folder (`train|valid|test|mini_test/images|masks`), read from disk.

`dataset_statistics` counts what is there; `write_statistics` stores a dict as
`statistics.json` plus `statistics.png`, a bar chart of images per split like the original
tool's. `prepare msd` adds how the set was made (settings, slices dropped, cases skipped).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import UserError, first_line
from ..files import MAX_JSON_BYTES, describe, read_bytes, replacing, write_json
from ..progress import track
from .cases import SPLITS, case_of
from .images import IMAGE_SUFFIXES, MASK_SUFFIXES, files_in
from .masks import Color, read_mask, warn_off_color

MINI_TEST = "mini_test"
STATISTICS_FILES = ("statistics.json", "statistics.png")


def dataset_statistics(folder: Path, colors: Sequence[Color] | None = None) -> dict:
    """Counts from the files on disk that training reads (images and masks of any format it
    takes, hidden files passed over); masks are read as class `colors` (data.classes; by
    default its default: background black, tumor white, as `prepare msd` writes them).

    Returns `images` and `masks` per split (mini_test included), `cases` and `case_ids` per
    split, `tumor_pixel_share` (mask pixels of a class other than the first, background, over
    all mask pixels) per split and over train+valid+test as `all`, and `tumor_free_images`
    (masks with no such pixel) per split.
    """
    folder = Path(folder)
    colors = colors or [spec.color for spec in DataConfig().classes]
    if not folder.is_dir():
        raise UserError(f"{folder}: {describe(folder)}; give a dataset folder (train|valid|test/"
                        "images|masks)")
    if not any((folder / split / "images").is_dir() for split in SPLITS):
        raise UserError(
            f"{folder}: no train/valid/test images folders; "
            "give a dataset folder written by `flexunet prepare msd`"
        )
    files = {
        split: {kind: _files(folder / split / kind, suffixes)
                for kind, suffixes in (("images", IMAGE_SUFFIXES), ("masks", MASK_SUFFIXES))}
        for split in (*SPLITS, MINI_TEST)
    }
    masks = [(split, path) for split in SPLITS for path in files[split]["masks"]]
    tumor = dict.fromkeys(SPLITS, 0)
    pixels = dict.fromkeys(SPLITS, 0)
    tumor_free = dict.fromkeys(SPLITS, 0)
    off_color = {split: [] for split in SPLITS}
    for split, path in track(masks, "reading masks", total=len(masks)):
        labels, off = read_mask(path, colors)
        count = int(np.count_nonzero(labels))
        tumor[split] += count
        pixels[split] += labels.size
        tumor_free[split] += count == 0
        off_color[split].append(off)
    for split in SPLITS:
        warn_off_color(folder / split / "masks", np.array(off_color[split]), stacklevel=2)
    share = {split: _share(tumor[split], pixels[split]) for split in SPLITS}
    share["all"] = _share(sum(tumor.values()), sum(pixels.values()))
    case_ids = {
        split: sorted({case_of(path) for path in files[split]["images"]}) for split in SPLITS
    }
    return {
        "images": {split: len(kinds["images"]) for split, kinds in files.items()},
        "masks": {split: len(kinds["masks"]) for split, kinds in files.items()},
        "cases": {split: len(ids) for split, ids in case_ids.items()},
        "case_ids": case_ids,
        "tumor_pixel_share": share,
        "tumor_free_images": tumor_free,
    }


def write_statistics(folder: Path, stats: dict, name: str | None = None) -> None:
    """Write `statistics.json` and `statistics.png` (bar chart of images per split, titled with
    the dataset's `name`, by default the folder's) in folder."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder = Path(folder)
    write_json(folder / "statistics.json", stats)
    counts = [stats["images"][split] for split in SPLITS]
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bars = axes.bar(SPLITS, counts, color=["tab:blue", "tab:orange", "tab:green"])
    axes.bar_label(bars)
    axes.set_ylabel("images")
    axes.set_title(f"{name or folder.resolve().name}: images per split")
    axes.margins(y=0.15)
    with replacing(folder / "statistics.png") as path:
        figure.savefig(path, format="png")


def update_statistics(folder: Path, colors: Sequence[Color] | None = None) -> dict:
    """Recount a dataset folder (masks in class `colors`, see `dataset_statistics`) and rewrite
    its statistics, keeping the keys only `prepare msd` knows (settings, slices dropped, cases
    skipped) from an earlier statistics.json. Statistics files that flexunet did not write are
    refused, not replaced."""
    folder = Path(folder)
    previous, chart = folder / STATISTICS_FILES[0], folder / STATISTICS_FILES[1]
    hint = "move it away, then run again"
    stats = {}
    if previous.exists():
        try:
            stats = json.loads(read_bytes(previous, hint, MAX_JSON_BYTES))
            if not isinstance(stats, dict) or "images" not in stats:
                raise ValueError(f"a JSON {type(stats).__name__} with no image counts")
        except (ValueError, RecursionError) as exc:
            raise UserError(f"{previous}: not flexunet's statistics "
                            f"({first_line(exc, typed=True)}); {hint}") from None
    elif chart.exists():
        raise UserError(f"{chart}: not written by flexunet (no {previous.name} beside it); {hint}")
    stats.update(dataset_statistics(folder, colors))
    write_statistics(folder, stats)
    return stats


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """The files of `folder` with one of `suffixes` as the loader lists them; none if no folder."""
    return files_in(folder, suffixes)[0] if folder.is_dir() else []


def _share(part: int, whole: int) -> float:
    return round(part / whole, 8) if whole else 0.0
