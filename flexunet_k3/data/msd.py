"""`prepare msd`: Medical Segmentation Decathlon volumes -> 2D PNG slices, split by patient.

Reads `dataset.json`, `imagesTr/*.nii.gz` and `labelsTr/*.nii.gz` from the extracted task
folder or straight from the `.tar` (members are read in memory, never extracted; macOS `._*`
files are skipped). Each case is turned so that axial slices look the way radiologists view
them (patient's anterior at the top, patient's right on the image's left), windowed to 8-bit,
resized, and written as `{case}_{slice}.png` (case = the number in the file name, slice = the
axial index in the volume). Everything is written in a temporary folder beside the output and
moved into place at the end, so a failed run leaves nothing half-written. `manifest.json` lists
the files a run wrote: `--overwrite` replaces or removes those, and never any other file.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import posixpath
import re
import shutil
import signal
import sys
import tarfile
import threading
import time
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError, check_range, first_line, listing, plural
from ..files import (
    MAX_JSON_BYTES,
    check_output_folder,
    check_size,
    describe,
    read_bytes,
    staged,
    write_json,
)
from ..progress import track
from .cases import MAX_SEED, SPLITS, SPLITS_FILE, case_id, split_cases, write_splits
from .images import resize_image, resize_labels
from .nifti import (
    MAX_FILE_BYTES,
    MAX_VOXELS,
    Volume,
    check_class_ids,
    check_same_grid,
    display_slice,
    has_patient_axes,
    is_nifti,
    to_display,
    volume_from_bytes,
)
from .statistics import MINI_TEST, STATISTICS_FILES, dataset_statistics, write_statistics

# Soft-tissue (mediastinal) window, W350 L50: lungs and fat black, muscle and blood mid grey,
# contrast-filled vessels light, bone white, as in the original tool's Lung-Tumor PNGs.
DEFAULT_WINDOW = (-125.0, 225.0)
DEFAULT_SPLIT = (0.7, 0.15, 0.15)
MAX_HU = 100_000.0  # a window beyond this many Hounsfield units is a typing error
MANIFEST = "manifest.json"  # the files a run wrote, which the next --overwrite may replace
WRITTEN_BY = "flexunet prepare msd"
DATASET_FILES = (*STATISTICS_FILES, SPLITS_FILE, MANIFEST)  # beside the split folders
ORPHAN_CHECK_SECONDS = 1.0  # how soon a pool worker ends after its parent was killed
SLICE_FILE = re.compile(r"(train|valid|test|mini_test)/(images|masks)/[^/\0]+\.png")
SOURCE_HINT = "give Task06_Lung.tar or its extracted folder (dataset.json, imagesTr, labelsTr)"
FILE_HINT = "dataset.json and the volumes it lists must be files"
VOLUME_HINT = f"{FILE_HINT}, NIfTI volumes of at most {MAX_VOXELS} voxels"


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

    def read(self, name: str, limit: int | None = None, hint: str = FILE_HINT) -> bytes:
        """The bytes of the file `name` (through a hard link in an archive); refused (with
        `hint`, what to do) where it is not a regular file (a folder, a symbolic link inside the
        archive, a pipe) or is larger than `limit` bytes."""
        try:
            if self.members is None:
                return read_bytes(self.path / self.root / name, hint, limit)
            with tarfile.open(self.path) as tar:
                member = tar.getmember(self.root + name)
                if member.islnk():
                    member = _hard_link_target(tar, member)
                if not member.isfile():
                    raise UserError(f"{self.where(name)}: is {_kind(member)} in the archive, "
                                    f"not a file; {hint}")
                check_size(self.where(name), member.size, limit, hint)
                return tar.extractfile(member).read()
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
    min(4, CPUs) processes. A case whose label does not lie on its image's voxel grid (shape or
    affine), or with a degenerate affine, is skipped with a warning, or stops the run when
    `strict`; a label of values other than 0 and 1 stops it. An output that holds a
    dataset is refused unless `overwrite`, which replaces only the files and folders this
    wrote (those its manifest.json lists), never any other. Returns the statistics written to
    statistics.json.
    """
    settings = _check_settings(window, size, keep_empty, split, seed, mini_test, workers)
    window = tuple(settings["window"])
    output = Path(output)
    task = open_source(Path(source))
    cases = read_cases(task)
    owned = _check_output(output, overwrite)
    with staged(output) as staging:  # moved into `output` at the end, and only then
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
        stats["cases_without_slices"] = _without_slices(results)
        stats["settings"] = {"source": str(source), **settings}
        write_statistics(staging, stats, output.resolve().name)
        _make_room(staging, output, owned)
    return stats


def open_source(path: Path) -> Source:
    """Find the task folder (the one holding dataset.json) in a folder or a tar, one level deep
    at most, and check it has imagesTr."""
    if not (path.is_dir() or path.is_file()):
        raise UserError(f"{path}: {describe(path)}; {SOURCE_HINT}")
    if path.is_file() and is_nifti(path.name):
        raise UserError(f"{path}: one volume, not a task; {SOURCE_HINT}")
    if path.is_dir():
        members = None
        names = [p.relative_to(path).as_posix() for p in path.glob("dataset.json")]
        names += [p.relative_to(path).as_posix() for p in sorted(path.glob("*/dataset.json"))]
        if not names and not any(path.iterdir()):
            raise UserError(f"{path}: empty folder; {SOURCE_HINT}")
    else:
        members = _tar_members(path)
        names = sorted(m for m in members if posixpath.basename(m) == "dataset.json")
        _warn_if_compressed(path)
    if not names:
        raise UserError(f"{path}: no dataset.json found; {SOURCE_HINT}")
    depth = min(name.count("/") for name in names)
    roots = [name[: -len("dataset.json")] for name in names if name.count("/") == depth]
    if len(roots) > 1:
        raise UserError(f"{path}: holds {len(roots)} tasks ({listing(sorted(roots))}); give the "
                        "folder or archive of one")
    task = Source(path, roots[0], members)
    if not task.has("imagesTr"):
        raise UserError(f"{task.where('imagesTr')}: missing; {SOURCE_HINT}")
    return task


def read_cases(task: Source) -> list[tuple[str, str, str]]:
    """(case id, image, label) for each training pair listed in dataset.json, sorted by case."""
    where = task.where("dataset.json")
    try:
        training = json.loads(task.read("dataset.json", MAX_JSON_BYTES))["training"]
        pairs = [(posixpath.normpath(i["image"]), posixpath.normpath(i["label"])) for i in training]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UserError(
            f"{where}: not a Decathlon dataset.json ({first_line(exc, typed=True)}); "
            'it needs a "training" list of {"image": ..., "label": ...}'
        ) from None
    if not pairs:
        raise UserError(f'{where}: the "training" list is empty; nothing to prepare')
    cases = {}
    for image, label in pairs:
        for name in (image, label):
            if posixpath.isabs(name) or name.split("/")[0] == "..":
                raise UserError(f"{where}: {name} lies outside the task folder; its paths must "
                                "be relative to it (./imagesTr/...)")
            if not task.has(name):
                raise UserError(f"{task.where(name)}: missing (listed in {where})")
        case = case_id(image)
        if not case:  # `imagesTr/.nii.gz`: its slices would be `_0.png`
            raise UserError(f"{task.where(image)}: a name with no case id in it (listed in "
                            f"{where}); name it like lung_001.nii.gz")
        if case in cases:
            raise UserError(f"{where}: two images have case id {case}; file names must differ")
        cases[case] = (case, image, label)
    return [cases[case] for case in sorted(cases)]


def convert_case(job: CaseJob) -> CaseResult:
    """Write the kept slices of one case as 8-bit PNG pairs in `job.folder/images|masks`."""
    image = read_task_volume(job.source, job.image)
    label = read_task_volume(job.source, job.label)
    check_class_ids(label, "the label (0 background, 1 tumor)", classes=2)
    for volume in (image, label):
        if not has_patient_axes(volume.affine):
            return CaseResult(
                job.case,
                problem=f"case {job.case}: {volume.where} has a degenerate affine "
                "(its voxel axes do not point along three distinct patient axes)",
            )
    try:
        check_same_grid(label, image, "a label must lie on its image's voxel grid")
    except UserError as exc:
        return CaseResult(job.case, problem=f"case {job.case}: {exc}")
    display = to_display(image.data, image.affine)
    mask = to_display(label.data, label.affine) > 0
    tumor = mask.any(axis=(0, 1))
    empty = np.flatnonzero(~tumor)
    rng = np.random.default_rng([job.seed, zlib.crc32(os.fsencode(job.case))])
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
    """A 3D NIfTI volume from the task folder or archive; a file larger than any volume may be
    is refused before it is read."""
    return volume_from_bytes(task.read(name, MAX_FILE_BYTES, VOLUME_HINT), task.where(name))


def _check_settings(window, size, keep_empty, split, seed, mini_test, workers) -> dict:
    """Validate the options (NaN and infinities refused); return them as recorded in
    statistics.json."""
    window, split = [float(v) for v in window], [float(v) for v in split]
    if len(window) != 2 or not -MAX_HU <= window[0] < window[1] <= MAX_HU:
        raise UserError(f"--window {','.join(f'{v:g}' for v in window)}: need LOW,HIGH "
                        f"Hounsfield units with {-MAX_HU:g} <= LOW < HIGH <= {MAX_HU:g}")
    if len(split) != 3 or not all(0 <= f <= 1 for f in split) or abs(sum(split) - 1.0) > 1e-6:
        raise UserError(f"--split {','.join(f'{v:g}' for v in split)}: need three fractions "
                        "(train, valid, test) from 0 to 1, summing to 1")
    check_range("--size", size, 16, 4096)
    check_range("--keep-empty", keep_empty, 0, 1)
    check_range("--seed", seed, 0, MAX_SEED)
    check_range("--mini-test", mini_test, 0, 10_000)
    if workers is not None:
        check_range("--workers", workers, 1, 64)
    return {
        "window": window,
        "size": size,
        "keep_empty": keep_empty,
        "split": split,
        "mini_test": mini_test,
        "workers": workers or min(4, os.cpu_count() or 1),
        "seed": seed,
    }


def _check_output(output: Path, overwrite: bool) -> frozenset[str]:
    """Refuse, before any work, a file in the way of a folder to write, and a dataset in
    `output` unless `overwrite`; return the files the earlier run wrote there (its manifest),
    after refusing its statistics or split record where no manifest lists them."""
    check_output_folder(
        output, [f"{name}/{kind}" for name in (*SPLITS, MINI_TEST) for kind in ("images", "masks")]
    )
    found = [name for name in (*SPLITS, MINI_TEST, *DATASET_FILES) if (output / name).exists()]
    if found and not overwrite:
        raise UserError(
            f"{output}: already holds a dataset ({', '.join(found)}); "
            "pass --overwrite to replace it, or choose another output folder"
        )
    owned = _owned(output)
    _refuse_replacing(output, [name for name in DATASET_FILES if name != MANIFEST], owned)
    return owned


def _owned(output: Path) -> frozenset[str]:
    """The files (relative paths) that the manifest of an earlier run lists; none where there
    is no manifest."""
    path = output / MANIFEST
    if not path.exists():
        return frozenset()
    try:
        record = json.loads(read_bytes(path, "move it away, or choose another output folder",
                                       MAX_JSON_BYTES))
        files = record["files"]
        if record["written_by"] != WRITTEN_BY or not all(
            isinstance(name, str) and (name in DATASET_FILES or SLICE_FILE.fullmatch(name))
            for name in files
        ):
            raise ValueError("a file it lists is not one prepare msd writes")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UserError(f"{path}: not a manifest of `prepare msd` ({first_line(exc, typed=True)})"
                        "; move it away, or choose another output folder") from None
    return frozenset(files)


def _refuse_replacing(output: Path, names, owned: frozenset[str]) -> None:
    """Refuse to write any of `names` (relative paths) where something not `owned` is."""
    theirs = [name for name in names if (output / name).exists()
              and (name not in owned or not (output / name).is_file())]
    if theirs:
        raise UserError(
            f"{output}: {listing(theirs)} not written by `prepare msd` (not in its {MANIFEST}); "
            f"move {'it' if len(theirs) == 1 else 'them'} away, or choose another output folder"
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
    pool = worker_pool(min(workers, len(jobs)))
    try:
        yield _pooled(pool.submit(convert_case, job) for job in jobs)
    finally:
        pool.shutdown(cancel_futures=True)


def _pooled(futures: Iterable[Future]) -> Iterator[CaseResult]:
    """The results of `futures` as they finish; a worker that died (killed, perhaps by the
    system for want of memory) a UserError."""
    try:
        for future in as_completed(list(futures)):
            yield future.result()
    except BrokenProcessPool:
        raise UserError("a worker process ended abruptly (killed, perhaps by the system for "
                        "want of memory); run again with fewer --workers") from None


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` processes that end once this process is gone. On Linux they are
    forked whatever the default start method (Python 3.14's is a fork server): each one's
    parent is then this process, and it starts at once, so a Ctrl-C does not catch it before
    it ignores SIGINT (a spawned one takes half a second, and prints a traceback if interrupted
    then). Elsewhere the default, spawn, also makes them children of this process."""
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_start_worker, initargs=(os.getpid(),))


def _start_worker(parent: int) -> None:
    """In a pool worker: leave Ctrl-C to the main process, which stops the pool, and end once
    that process (`parent`, named by itself: it may be gone before the worker starts) is gone;
    killed outright, it could not stop the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_when_orphaned, args=(parent,), daemon=True).start()


def _end_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(1)


def _arrange(staging: Path, results: list[CaseResult], split, seed: int, mini_test: int) -> dict:
    """Move each case's slices into its split, and copy a seeded sample of test slices;
    return the case ids of each split."""
    written = [result.case for result in results if result.slices]
    if not written:
        if all(result.problem for result in results):
            raise UserError(f"every case was skipped ({plural(len(results), 'case')}); the "
                            f"first: {results[0].problem}")
        raise UserError("no slice with a tumor in any case; check the labels, or use --keep-empty")
    splits = split_cases(written, split, seed)
    # patients with no slice kept (tumor-free) are split by the same fractions, apart, so every
    # split keeps slices: whole-volume scores see tumor-free patients held out too
    for name, cases in split_cases(_without_slices(results), split, seed).items():
        splits[name] = [*splits[name], *cases]
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


def _without_slices(results: list[CaseResult]) -> list[str]:
    """The cases read whole that gave no slice (no tumor, and no tumor-free slice kept)."""
    return [result.case for result in results if not result.problem and not result.slices]


def _make_room(staging: Path, output: Path, owned: frozenset[str]) -> None:
    """Ready `output` for the staged dataset: refuse (changing nothing) where a file to write
    is not `owned`; remove the owned files the new dataset lacks. The manifest lists the
    files of both runs meanwhile, then (moved in with the rest) the new run's."""
    new = {path.relative_to(staging).as_posix() for path in staging.rglob("*")
           if path.is_file()}
    _refuse_replacing(output, sorted(new), owned)
    write_json(output / MANIFEST, {"written_by": WRITTEN_BY, "files": sorted(new | owned)})
    for name in sorted(owned - new):
        if (output / name).is_file():
            (output / name).unlink()
    write_json(staging / MANIFEST, {"written_by": WRITTEN_BY, "files": sorted(new)})


def _hard_link_target(tar: tarfile.TarFile, link: tarfile.TarInfo) -> tarfile.TarInfo:
    """The file a hard link in `tar` names (as `tar` writes a file found twice), else the link."""
    try:
        target = tar.getmember(link.linkname)
    except KeyError:
        return link
    return target if target.isfile() else link


def _kind(member: tarfile.TarInfo) -> str:
    """What an archive member that is not a file is, for messages."""
    if member.isdir():
        return "a folder"
    if member.issym():
        return "a symbolic link"
    return "a hard link" if member.islnk() else "a special file"


COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}  # magic bytes


def _warn_if_compressed(path: Path) -> None:
    """A compressed tar is unpacked from its start for every member read: say so, and how to
    make it quick (the Decathlon's own archives are plain tars)."""
    with path.open("rb") as file:
        head = file.read(6)
    for magic, kind in COMPRESSED.items():
        if head.startswith(magic):
            warnings.warn(f"{path}: a {kind}-compressed archive is unpacked from its start for "
                          "every volume read, which is slow for a large task; unpack it once "
                          "to a plain .tar or a folder first", stacklevel=3)


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
