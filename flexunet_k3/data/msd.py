"""`prepare msd`: Medical Segmentation Decathlon volumes -> 2D PNG slices, split by patient.

Reads `dataset.json`, `imagesTr/*.nii.gz` and `labelsTr/*.nii.gz` from the extracted task
folder or straight from the `.tar` (members are read in memory, never extracted; macOS `._*`
files are skipped). Each case is turned so that axial slices look the way radiologists view
them (patient's anterior at the top, patient's right on the image's left), windowed to 8-bit,
resized, and written as `{case}_{slice}.png` (case = the number in the file name, slice = the
axial index in the volume). Everything is written in a temporary folder beside the output and
moved into place at the end, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError, first_line
from ..files import check_output_folder
from ..progress import track
from .cases import SPLITS, SPLITS_FILE, case_id, split_cases, write_splits
from .images import resize_image, resize_labels
from .nifti import Volume, display_slice, has_patient_axes, to_display, volume_from_bytes
from .statistics import MINI_TEST, STATISTICS_FILES, dataset_statistics, write_statistics

# Soft-tissue (mediastinal) window, W350 L50: lungs and fat black, muscle and blood mid grey,
# contrast-filled vessels light, bone white, as in the original tool's Lung-Tumor PNGs.
DEFAULT_WINDOW = (-125.0, 225.0)
DEFAULT_SPLIT = (0.7, 0.15, 0.15)
DATASET_FILES = (*STATISTICS_FILES, SPLITS_FILE)  # beside the split folders
SOURCE_HINT = "give Task06_Lung.tar or its extracted folder (dataset.json, imagesTr, labelsTr)"


@dataclass(frozen=True)
class Source:
    """An extracted task folder, or a tar holding one; `root` is the task folder inside it."""

    path: Path
    root: str  # "" or "Task06_Lung/"
    members: frozenset[str] | None = None  # names inside the tar; None for a folder

    def has(self, name: str) -> bool:
        """Whether the file or folder `name` (relative to the task folder) exists."""
        if self.members is None:
            return (self.path / self.root / name).exists()
        full = self.root + name
        return full in self.members or any(m.startswith(full + "/") for m in self.members)

    def read(self, name: str) -> bytes:
        try:
            if self.members is None:
                return (self.path / self.root / name).read_bytes()
            with tarfile.open(self.path) as tar:
                return tar.extractfile(self.root + name).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(
                f"{self.where(name)}: unreadable ({first_line(exc)}); download it again"
            ) from None

    def where(self, name: str) -> str:
        """`name` as a user finds it: a path, or `archive.tar:member`."""
        if self.members is None:
            return str(self.path / self.root / name)
        return f"{self.path}:{self.root}{name}"


@dataclass(frozen=True)
class CaseJob:
    """One case to convert, and where and how to write its slices."""

    source: Source
    case: str
    image: str
    label: str
    folder: Path
    window: tuple[float, float]
    size: int
    keep_empty: float
    seed: int


@dataclass(frozen=True)
class CaseResult:
    case: str
    slices: int = 0
    dropped: int = 0  # tumor-free slices left out
    problem: str = ""  # why the case was skipped, if it was


def prepare_msd(
    source: Path,
    output: Path,
    *,
    window: Sequence[float] = DEFAULT_WINDOW,
    size: int = 512,
    keep_empty: float = 0.0,
    split: Sequence[float] = DEFAULT_SPLIT,
    seed: int = 42,
    mini_test: int = 10,
    workers: int | None = None,
    strict: bool = False,
    overwrite: bool = False,
) -> dict:
    """Convert a Decathlon task (folder or .tar) into `train|valid|test|mini_test/images|masks`.

    Defaults: window -125..225 HU (soft-tissue, like the original's PNGs), 512x512 slices
    (images bilinear, masks nearest, masks 0/255), tumor-free slices dropped (`keep_empty`
    keeps that seeded share of them), cases split 70/15/15 by patient with `seed` (each split
    gets a case when there are 3 or more), 10 test slices copied to mini_test, `workers` =
    min(4, CPUs) processes. A case whose image and label shapes differ, or with a degenerate
    affine, is skipped with a warning, or stops the run when `strict`. An output that holds a
    dataset is refused unless `overwrite`, which replaces only the files and folders this
    writes. Returns the statistics written to statistics.json.
    """
    settings = _check_settings(window, size, keep_empty, split, mini_test, workers)
    window = tuple(settings["window"])
    output = Path(output)
    task = open_source(Path(source))
    cases = read_cases(task)
    _check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    # our own staging folder beside the output, removed however this ends
    with tempfile.TemporaryDirectory(
        prefix=f".{output.name}.", suffix=".tmp", dir=output.parent, ignore_cleanup_errors=True
    ) as temporary:
        staging = Path(temporary)
        jobs = [
            CaseJob(
                task, case, image, label, staging / "cases" / case, window, size, keep_empty, seed
            )
            for case, image, label in cases
        ]
        results = _convert(jobs, settings["workers"], strict)
        splits = _arrange(staging, results, settings["split"], seed, mini_test)
        files = {case: {"image": image, "label": label} for case, image, label in cases
                 if any(case in ids for ids in splits.values())}
        write_splits(staging, task.path, splits, files, window)
        stats = dataset_statistics(staging)
        stats["tumor_free_slices_dropped"] = sum(r.dropped for r in results)
        stats["skipped_cases"] = {r.case: r.problem for r in results if r.problem}
        stats["settings"] = {"source": str(source), **settings, "seed": seed}
        write_statistics(staging, stats, output.resolve().name)
        _install(staging, output)
    return stats


def open_source(path: Path) -> Source:
    """Find the task folder (the one holding dataset.json) in a folder or a tar, one level deep
    at most, and check it has imagesTr."""
    if not path.exists():
        raise UserError(f"{path}: not found; {SOURCE_HINT}")
    if path.is_dir():
        members = None
        names = [p.relative_to(path).as_posix() for p in path.glob("dataset.json")]
        names += [p.relative_to(path).as_posix() for p in sorted(path.glob("*/dataset.json"))]
        if not names and not any(path.iterdir()):
            raise UserError(f"{path}: empty folder; {SOURCE_HINT}")
    else:
        members = _tar_members(path)
        names = sorted(m for m in members if posixpath.basename(m) == "dataset.json")
    if not names:
        raise UserError(f"{path}: no dataset.json found; {SOURCE_HINT}")
    task = Source(path, min(names, key=len)[: -len("dataset.json")], members)
    if not task.has("imagesTr"):
        raise UserError(f"{task.where('imagesTr')}: missing; {SOURCE_HINT}")
    return task


def read_cases(task: Source) -> list[tuple[str, str, str]]:
    """(case id, image, label) for each training pair listed in dataset.json, sorted by case."""
    where = task.where("dataset.json")
    try:
        training = json.loads(task.read("dataset.json"))["training"]
        pairs = [(posixpath.normpath(i["image"]), posixpath.normpath(i["label"])) for i in training]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{where}: not a Decathlon dataset.json ({type(exc).__name__}: {exc}); "
            'it needs a "training" list of {"image": ..., "label": ...}'
        ) from None
    if not pairs:
        raise UserError(f'{where}: the "training" list is empty; nothing to prepare')
    cases = {}
    for image, label in pairs:
        for name in (image, label):
            if not task.has(name):
                raise UserError(f"{task.where(name)}: missing (listed in {where})")
        case = case_id(image)
        if case in cases:
            raise UserError(f"{where}: two images have case id {case}; file names must differ")
        cases[case] = (case, image, label)
    return [cases[case] for case in sorted(cases)]


def convert_case(job: CaseJob) -> CaseResult:
    """Write the kept slices of one case as 8-bit PNG pairs in `job.folder/images|masks`."""
    image = read_task_volume(job.source, job.image)
    label = read_task_volume(job.source, job.label)
    if image.data.shape != label.data.shape:
        return CaseResult(
            job.case,
            problem=f"case {job.case}: image {image.where} has shape "
            f"{image.data.shape} but its label has {label.data.shape}",
        )
    for volume in (image, label):
        if not has_patient_axes(volume.affine):
            return CaseResult(
                job.case,
                problem=f"case {job.case}: {volume.where} has a degenerate affine "
                "(its voxel axes do not point along three distinct patient axes)",
            )
    display = to_display(image.data, image.affine)
    mask = to_display(label.data, label.affine) > 0
    tumor = mask.any(axis=(0, 1))
    empty = np.flatnonzero(~tumor)
    rng = np.random.default_rng([job.seed, zlib.crc32(job.case.encode())])
    kept = rng.choice(empty, size=round(job.keep_empty * len(empty)), replace=False)
    chosen = np.union1d(np.flatnonzero(tumor), kept)
    for kind in ("images", "masks"):
        (job.folder / kind).mkdir(parents=True, exist_ok=True)
    size = (job.size, job.size)
    for index in chosen:
        name = f"{job.case}_{index}.png"
        slice_image = display_slice(display, index, job.window)
        Image.fromarray(resize_image(slice_image[..., None], size)[..., 0]).save(
            job.folder / "images" / name
        )
        binary = mask[:, :, index].astype(np.uint8) * 255
        Image.fromarray(resize_labels(binary, size)).save(job.folder / "masks" / name)
    return CaseResult(job.case, slices=len(chosen), dropped=len(empty) - len(kept))


def read_task_volume(task: Source, name: str) -> Volume:
    """A 3D NIfTI volume from the task folder or archive."""
    return volume_from_bytes(task.read(name), task.where(name))


def _check_settings(window, size, keep_empty, split, mini_test, workers) -> dict:
    """Validate the options; return them as recorded in statistics.json."""
    window, split = [float(v) for v in window], [float(v) for v in split]
    if len(window) != 2 or window[0] >= window[1]:
        raise UserError(f"window {window}: need LOW,HIGH Hounsfield units with LOW < HIGH")
    if not 16 <= size <= 4096:
        raise UserError(f"size {size}: need 16 to 4096 pixels")
    if not 0.0 <= keep_empty <= 1.0:
        raise UserError(f"keep-empty {keep_empty}: need a share from 0 to 1")
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6:
        raise UserError(f"split {split}: need three fractions (train, valid, test) summing to 1")
    if mini_test < 0 or (workers is not None and workers < 1):
        raise UserError(
            f"mini-test {mini_test}, workers {workers}: need mini-test >= 0, workers >= 1"
        )
    workers = workers or min(4, os.cpu_count() or 1)
    return {
        "window": window,
        "size": size,
        "keep_empty": keep_empty,
        "split": split,
        "mini_test": mini_test,
        "workers": workers,
    }


def _check_output(output: Path, overwrite: bool) -> None:
    check_output_folder(
        output, [f"{name}/{kind}" for name in (*SPLITS, MINI_TEST) for kind in ("images", "masks")]
    )
    found = [name for name in (*SPLITS, MINI_TEST, *DATASET_FILES) if (output / name).exists()]
    if found and not overwrite:
        raise UserError(
            f"{output}: already holds a dataset ({', '.join(found)}); "
            "pass --overwrite to replace it, or choose another output folder"
        )


def _convert(jobs: list[CaseJob], workers: int, strict: bool) -> list[CaseResult]:
    """Convert every case with a progress bar; warn about (or, strict, stop at) bad cases."""
    results = []
    with _results(jobs, workers) as finished:
        for result in track(finished, "prepare msd (cases)", total=len(jobs)):
            if result.problem and strict:
                raise UserError(f"{result.problem}; fix the case, or run without --strict")
            if result.problem:
                warnings.warn(f"{result.problem}; skipped", UserWarning, stacklevel=3)
            results.append(result)
    return sorted(results, key=lambda result: result.case)


@contextlib.contextmanager
def _results(jobs: list[CaseJob], workers: int) -> Iterator[Iterator[CaseResult]]:
    """Case results as they finish: here for one worker, else from a process pool (cancelled
    when the caller stops early)."""
    if workers == 1 or len(jobs) == 1:
        yield map(convert_case, jobs)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)))
    try:
        futures = [pool.submit(convert_case, job) for job in jobs]
        yield (future.result() for future in as_completed(futures))
    finally:
        pool.shutdown(cancel_futures=True)


def _arrange(staging: Path, results: list[CaseResult], split, seed: int, mini_test: int) -> dict:
    """Move each case's slices into its split, and copy a seeded sample of test slices;
    return the case ids of each split."""
    written = [result.case for result in results if result.slices]
    if not written:
        raise UserError("no slice with a tumor in any case; check the labels, or use --keep-empty")
    splits = split_cases(written, split, seed)
    for name, cases in splits.items():
        for kind in ("images", "masks"):
            (staging / name / kind).mkdir(parents=True)
            for case in cases:
                for path in sorted((staging / "cases" / case / kind).iterdir()):
                    os.replace(path, staging / name / kind / path.name)
    tests = sorted(path.name for path in (staging / "test" / "images").iterdir())
    picked = np.random.default_rng(seed).permutation(len(tests))[:mini_test]
    for kind in ("images", "masks"):
        (staging / MINI_TEST / kind).mkdir(parents=True)
        for index in sorted(picked):
            name = tests[index]
            shutil.copyfile(staging / "test" / kind / name, staging / MINI_TEST / kind / name)
    return splits


def _install(staging: Path, output: Path) -> None:
    """Replace the dataset in `output` by the staged one, leaving any other file there alone."""
    output.mkdir(parents=True, exist_ok=True)
    for name in (*SPLITS, MINI_TEST):
        for kind in ("images", "masks"):
            for path in (output / name / kind).glob("*.png"):
                path.unlink()
            _remove_if_empty(output / name / kind)
        _remove_if_empty(output / name)
    for name in (*SPLITS, MINI_TEST, *DATASET_FILES):
        _move(staging / name, output / name)


def _move(source: Path, target: Path) -> None:
    """Rename onto target; into a folder that is still there (holding other files) entry-wise."""
    if target.is_dir():
        for child in source.iterdir():
            _move(child, target / child.name)
    else:
        os.replace(source, target)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _tar_members(path: Path) -> frozenset[str]:
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(
            f"{path}: not a readable tar archive ({first_line(exc)}); it may be truncated or "
            "corrupt: download it again, or give the extracted folder"
        ) from None
    return frozenset(n for n in names if not posixpath.basename(n).startswith("._"))
