"""Statistics of a 2D dataset folder (`train|valid|test|mini_test/images|masks`), read from disk.

`dataset_statistics` counts what is there; `write_statistics` stores a dict as
`statistics.json` plus `statistics.png`, a bar chart of images per split like the original
tool's. `prepare msd` adds how the set was made (settings, slices dropped, cases skipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError, first_line
from ..files import MAX_JSON_BYTES, describe, read_bytes, replacing, write_json
from ..progress import track
from .cases import SPLITS, case_of

MINI_TEST = "mini_test"
STATISTICS_FILES = ("statistics.json", "statistics.png")


def dataset_statistics(folder: Path) -> dict:
    """Counts from the PNG files on disk.

    Returns `images` and `masks` per split (mini_test included), `cases` and `case_ids` per
    split, `tumor_pixel_share` (mask pixels > 127 over all mask pixels) per split and over
    train+valid+test as `all`, and `tumor_free_images` (masks with no tumor pixel) per split.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: {describe(folder)}; give a dataset folder (train|valid|test/"
                        "images|masks)")
    if not any((folder / split / "images").is_dir() for split in SPLITS):
        raise UserError(
            f"{folder}: no train/valid/test images folders; "
            "give a dataset folder written by `flexunet prepare msd`"
        )
    files = {
        split: {kind: sorted((folder / split / kind).glob("*.png")) for kind in ("images", "masks")}
        for split in (*SPLITS, MINI_TEST)
    }
    masks = [(split, path) for split in SPLITS for path in files[split]["masks"]]
    tumor = dict.fromkeys(SPLITS, 0)
    pixels = dict.fromkeys(SPLITS, 0)
    tumor_free = dict.fromkeys(SPLITS, 0)
    for split, path in track(masks, "reading masks", total=len(masks)):
        count, total = _tumor_pixels(path)
        tumor[split] += count
        pixels[split] += total
        tumor_free[split] += count == 0
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


def update_statistics(folder: Path) -> dict:
    """Recount a dataset folder and rewrite its statistics, keeping the keys only
    `prepare msd` knows (settings, slices dropped, cases skipped) from an earlier
    statistics.json. Statistics files that flexunet did not write are refused, not replaced."""
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
    stats.update(dataset_statistics(folder))
    write_statistics(folder, stats)
    return stats


def _tumor_pixels(path: Path) -> tuple[int, int]:
    if not path.is_file():
        raise UserError(f"{path}: {describe(path)}, not a PNG mask; move it away")
    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) > 127
    except OSError as exc:
        raise UserError(
            f"{path}: not a readable PNG mask ({exc}); replace it, or move it away"
        ) from None
    return int(mask.sum()), mask.size


def _share(part: int, whole: int) -> float:
    return round(part / whole, 8) if whole else 0.0
