"""Cases (patients): the one rule that names them, the split by patient, and its record.

A slice file `{case}_{slice}.png` belongs to case `{case}` (the part before the first
underscore); a Decathlon volume `lung_036.nii.gz` is case `036`. `prepare msd` splits cases,
never slices, and records the split in the dataset's `splits.json`, so whole-volume inference
and evaluation can find the held-out patients in the source again.
"""

from __future__ import annotations

import json
import posixpath
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError, plural
from ..files import MAX_JSON_BYTES, read_bytes, write_json

SPLITS = ("train", "valid", "test")
SPLITS_FILE = "splits.json"
MAX_SEED = 2**32 - 1  # seeds of `prepare` run 0 to this


def case_of(path: str | Path) -> str:
    """The patient a slice belongs to: the file-name part before the first underscore (the
    whole stem where that part is empty: `_x_1.png` is case `_x_1`)."""
    stem = Path(path).stem
    return stem.split("_", 1)[0] or stem


def warn_shared_cases(held_out: Sequence[Path], seen: Sequence[Path], seen_splits: str,
                      consequence: str) -> None:
    """Warn where cases of the `held_out` images also have images in `seen` (`seen_splits`
    names those splits): slices of one patient on both sides make the held-out scores flatter."""
    shared = sorted({case_of(path) for path in held_out} & {case_of(path) for path in seen})
    if shared:
        named = ", ".join(shared[:3]) + (", ..." if len(shared) > 3 else "")
        warnings.warn(
            f"{held_out[0].parent}: {plural(len(shared), 'case')} ({named}) also in the "
            f"{seen_splits} split (a case is the file-name part before the first underscore): "
            f"{consequence}; split by patient, as `flexunet prepare msd` does",
            stacklevel=3,
        )


def case_id(name: str) -> str:
    """The last number in a file name: `imagesTr/lung_036.nii.gz` -> `036` (else the stem)."""
    stem = posixpath.basename(name).split(".")[0]
    numbers = re.findall(r"\d+", stem)
    return numbers[-1] if numbers else stem.replace("_", "-")


def split_cases(cases: Sequence[str], fractions: Sequence[float], seed: int) -> dict:
    """Shuffle cases with `seed` and cut them into train/valid/test by `fractions`.

    Counts are rounded by largest remainder; with 3 or more cases every split with a
    fraction above 0 gets at least one case.
    """
    order = [sorted(cases)[i] for i in np.random.default_rng(seed).permutation(len(cases))]
    n = len(order)
    counts = [int(f * n) for f in fractions]
    by_remainder = sorted(range(3), key=lambda i: counts[i] - fractions[i] * n)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    if n >= 3:
        for i in (i for i in range(3) if fractions[i] > 0 and counts[i] == 0):
            counts[counts.index(max(counts))] -= 1
            counts[i] += 1
    bounds = np.cumsum([0, *counts])
    return {split: order[bounds[i] : bounds[i + 1]] for i, split in enumerate(SPLITS)}


def write_splits(folder: Path, source: Path, splits: dict, files: dict, window) -> None:
    """splits.json: the source read, the HU window, each split's case ids and each case's
    image and label (paths inside the source's task folder)."""
    write_json(folder / SPLITS_FILE, {
        "source": str(Path(source).resolve()),
        "window": list(window),
        "splits": {split: sorted(splits[split]) for split in SPLITS},
        "files": {case: files[case] for case in sorted(files)},
    })


def read_splits(dataset: Path) -> dict:
    """The split record of a dataset folder written by `prepare msd`."""
    path = Path(dataset) / SPLITS_FILE
    if not path.exists():
        raise UserError(
            f"{path}: not found; the dataset was not made by this version's `flexunet prepare "
            "msd`: prepare it again to record which patients went to which split"
        )
    try:
        record = json.loads(read_bytes(path, "prepare the dataset again", MAX_JSON_BYTES))
        cases = record["splits"]["test"]
        paths = [record["files"][case] for case in cases]
        if not (isinstance(record["source"], str) and all(
                isinstance(p["image"], str) and isinstance(p["label"], str) for p in paths)):
            raise TypeError("source, or a case's image or label, is not a path")
        window = tuple(float(v) for v in record["window"])
        if not (len(window) == 2 and window[0] < window[1]):  # NaN fails too
            raise ValueError(f"window {record['window']} is not LOW < HIGH")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UserError(f"{path}: not a split record ({type(exc).__name__}: {exc}); "
                        "prepare the dataset again") from None
    return {**record, "window": window}
