"""Volume inference: CT NIfTI volumes in, tumor label NIfTI volumes out, over the core in
`inference`.

Each volume is turned and windowed exactly as `prepare msd` does, its axial slices are predicted
in batches and stacked, and the labels are written back in the source's voxel order with the
source's shape, affine, qform and sform, so a viewer lays them over the CT. Host memory holds
the volume, its label map (and probabilities, if asked) and one batch.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexunet_k3.config import Config
from flexunet_k3.data.cases import read_splits
from flexunet_k3.data.msd import DEFAULT_WINDOW, Source, open_source, read_task_volume
from flexunet_k3.data.nifti import (
    Volume,
    display_slice,
    has_patient_axes,
    is_nifti,
    nifti_stem,
    read_volume,
    to_display,
    write_like,
)
from flexunet_k3.errors import UserError, listing
from flexunet_k3.files import describe, refuse_overwriting, staged
from flexunet_k3.inference import iter_probabilities, labels_of
from flexunet_k3.progress import track

PROBABILITIES_SUFFIX = "_probabilities"


@dataclass(frozen=True)
class VolumeInput:
    """A volume to segment, read only when its turn comes; `label` reads its ground truth."""

    name: str  # the output's name without .nii.gz
    read: Callable[[], Volume]
    label: Callable[[], Volume] | None = None
    path: Path | None = None  # the file read, where it is one (not inside an archive)


def volumes_at(path: Path, tasks: bool = True) -> list[VolumeInput]:
    """The volumes to segment at `path`: a .nii/.nii.gz file, a folder of them, or (where
    `tasks`) a Decathlon task (folder or .tar), whose test volumes (imagesTs) are taken."""
    if path.is_file() and is_nifti(path.name):
        return [_file_input(path)]
    if path.is_dir() and not _is_task_folder(path):
        files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p.name)
                       and not p.name.startswith("."))
        if not files:
            raise UserError(f"{path}: no .nii or .nii.gz files here; give a NIfTI file, a folder "
                            "of them or a Decathlon task")
        return _unique([_file_input(p) for p in files])
    if not (path.is_file() or path.is_dir()):  # missing, or a pipe that reading would hang on
        raise UserError(f"{path}: {describe(path)}; give a NIfTI file, a folder of them or a task")
    if not tasks:
        what = "a Decathlon task folder" if path.is_dir() else "not a .nii or .nii.gz file"
        raise UserError(f"{path}: {what}; give a NIfTI file or a folder of them (for a task's "
                        "labels, its labelsTr folder)")
    return _task_test_volumes(open_source(path))


def held_out_volumes(config: Config, source: Path | None = None) -> list[VolumeInput]:
    """The test patients that `prepare msd` held out (the dataset's splits.json), read with
    their labels from the source it recorded, or from `source` (the same task, moved)."""
    if config.data.dataset is None:
        raise UserError("data.dataset is not set: the held-out patients are recorded in the "
                        "dataset folder that `flexunet prepare msd` wrote")
    record = read_splits(config.data.dataset)
    if source is None and not Path(record["source"]).exists():
        raise UserError(f"{record['source']}: the source recorded in {config.data.dataset}/"
                        "splits.json is gone; give the task's new place (infer --volumes, "
                        "evaluate --source)")
    task = open_source(Path(source or record["source"]))
    inputs = []
    for case in record["splits"]["test"]:
        files = record["files"][case]
        inputs.append(_task_input(task, files["image"], files["label"]))
    if not inputs:
        raise UserError(f"{config.data.dataset}: no test patients in its splits.json")
    return inputs


def dataset_window(config: Config) -> tuple[float, float]:
    """The HU window that prepared the training data (splits.json), else prepare's default."""
    if config.data.dataset is not None and (config.data.dataset / "splits.json").is_file():
        return read_splits(config.data.dataset)["window"]
    return DEFAULT_WINDOW


def segment_volume(
    model, volume: Volume, config: Config, window: tuple[float, float], *,
    probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 labels, uint8 probabilities x 255 or None) on the volume's own voxel grid."""
    if not has_patient_axes(volume.affine):
        raise UserError(f"{volume.where}: degenerate affine (its voxel axes do not point along "
                        "three distinct patient axes); cannot find its axial slices")
    display = to_display(volume.data, volume.affine)
    # Fortran order, as NIfTI stores voxels (and nibabel reads them): an axial slice of the
    # usual (x, y, z) volume is then one block of memory, written without striding
    labels = np.zeros(volume.data.shape, np.uint8, order="F")
    labels_view = to_display(labels, volume.affine)  # writes land in `labels`
    classes = max(config.model.num_classes, 1)
    scaled = (np.zeros((*volume.data.shape, classes), np.uint8, order="F") if probabilities
              else None)
    scaled_view = to_display(scaled, volume.affine) if probabilities else None
    for index, output in enumerate(iter_probabilities(model, _slices(display, window),
                                                      config)):
        labels_view[:, :, index] = labels_of(output)
        if scaled_view is not None:
            scaled_view[:, :, index] = np.rint(np.clip(output, 0, 1) * 255)
    return labels, scaled


def _slices(display: np.ndarray, window) -> Iterator[np.ndarray]:
    """Gray (h, w, 1) uint8 axial slices; the core repeats them to the model's channels."""
    for index in range(display.shape[2]):
        yield display_slice(display, index, window)[..., None]


@dataclass
class VolumeResult:
    written: list[str]  # the label volumes
    output_dir: Path
    files: list[str]  # all written (probabilities too), relative to output_dir


def infer_volumes(
    model, config: Config, inputs: list[VolumeInput], output_dir: Path, *,
    window: tuple[float, float], probabilities: bool = False, overwrite: bool = False,
    owned: Collection[Path] = (),
) -> VolumeResult:
    """Write `NAME.nii.gz` label maps (and `NAME_probabilities.nii.gz`, 4D, uint8 read back as
    0..1) for each input into `output_dir`, staged beside it and moved in at the end. Files of
    those names already there are refused unless `overwrite` or `owned`."""
    names = [f"{item.name}.nii.gz" for item in inputs]
    if probabilities:
        names += [f"{item.name}{PROBABILITIES_SUFFIX}.nii.gz" for item in inputs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # `a_probabilities` is also the probabilities of `a`
        raise UserError(f"{output_dir}: {listing(twice)} would be written twice (from two "
                        "inputs); rename one input, or leave out --probabilities")
    sources = {item.path.resolve() for item in inputs if item.path is not None}
    for name in names:  # --overwrite or not: the input is the user's own
        if (output_dir / name).resolve() in sources:
            raise UserError(f"{output_dir / name}: is an input volume, which the output would "
                            "replace; choose another --output")
    refuse_overwriting(output_dir, names, overwrite, owned)
    with staged(output_dir) as staging:
        for item in track(inputs, "inferring volumes", total=len(inputs)):
            volume = item.read()
            labels, scaled = segment_volume(model, volume, config, window,
                                            probabilities=probabilities)
            write_like(staging / f"{item.name}.nii.gz", labels, volume)
            if scaled is not None:
                write_like(staging / f"{item.name}{PROBABILITIES_SUFFIX}.nii.gz", scaled, volume,
                           scale=1 / 255)
    return VolumeResult([f"{item.name}.nii.gz" for item in inputs], output_dir, names)


def _is_task_folder(path: Path) -> bool:
    return (path / "dataset.json").is_file() or any(path.glob("*/dataset.json"))


def _task_test_volumes(task: Source) -> list[VolumeInput]:
    """A Decathlon task's test volumes: the NIfTI files in imagesTs (not in its subfolders), but
    hidden ones (macOS's `._*` twins)."""
    if task.members is None:
        folder = task.path / task.root / "imagesTs"
        found = [f"imagesTs/{path.name}" for path in folder.glob("*.nii*")]
    else:
        prefix = task.root + "imagesTs/"
        found = [m[len(task.root):] for m in task.members
                 if m.startswith(prefix) and "/" not in m[len(prefix):]]
    names = sorted(name for name in found
                   if is_nifti(name) and not posixpath.basename(name).startswith("."))
    if not names:
        raise UserError(f"{task.where('imagesTs')}: no test volumes; for the patients held out "
                        "by `prepare msd`, pass --split test")
    return _unique([_task_input(task, name) for name in names])


def _file_input(path: Path) -> VolumeInput:
    return VolumeInput(nifti_stem(path.name), lambda: read_volume(path), path=path)


def _task_input(task: Source, image: str, label: str | None = None) -> VolumeInput:
    """A volume of a Decathlon task (folder or archive), and its label if named."""
    return VolumeInput(
        nifti_stem(posixpath.basename(image)),
        lambda: read_task_volume(task, image),
        None if label is None else lambda: read_task_volume(task, label),
        None if task.members is not None else task.path / task.root / image,
    )


def _unique(inputs: list[VolumeInput]) -> list[VolumeInput]:
    seen = set()
    for item in inputs:
        if item.name in seen:
            raise UserError(f"two volumes are named {item.name} (.nii and .nii.gz?); both would "
                            f"be written as {item.name}.nii.gz: keep one")
        seen.add(item.name)
    return inputs
