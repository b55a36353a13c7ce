"""NIfTI volumes in one place: read (a file, or bytes from an archive), write a map over its
source (same shape, affine, qform and sform), turn to the radiological view and back, window
Hounsfield units to 8-bit. `prepare msd`, `prepare synthetic` and volume inference share it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from nibabel import orientations
from nibabel.filebasedimages import ImageFileError
from nibabel.imageglobals import logger as nibabel_logger
from nibabel.openers import Opener
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from ..errors import UserError, plural
from ..files import describe

SUFFIXES = (".nii.gz", ".nii")
NIFTI_2_HEADER_SIZE = 540  # a NIfTI file starts with its header size: 348 (NIfTI-1) or 540
AFFINE_TOLERANCE = 1e-4  # mm: two affines closer than this put voxels in the same places
MAX_VOXELS = 2**30  # 512 x 512 x 4096; a header claiming more is refused before reading
# The largest volume file read whole (an archive's member): MAX_VOXELS voxels of 8 bytes, not
# compressed, and a header with its extensions (16 MiB: more than any has, and than gzip adds)
MAX_FILE_BYTES = MAX_VOXELS * 8 + 2**24
DEFLATE_MAX_RATIO = 1032  # gzip (deflate) never unpacks one byte into more than this many
_READ_ERRORS = (
    OSError, EOFError, zlib.error, ValueError, ImageFileError, HeaderDataError, WrapStructError
)


@dataclass
class Volume:
    """A 3D NIfTI volume: voxels as stored (axes in the file's order), its affine and header."""

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    where: str  # a path, or `archive.tar:member`, for messages

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three voxel axes (the header's zooms)."""
        return tuple(float(z) for z in self.header.get_zooms()[:3])


def is_nifti(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def nifti_stem(name: str) -> str:
    """`lung_001.nii.gz` -> `lung_001`."""
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_volume(path: Path) -> Volume:
    """A 3D volume from a `.nii` or `.nii.gz` file; a UserError if it is anything else."""
    if not path.is_file():
        raise UserError(f"{path}: {describe(path)}; give a .nii or .nii.gz file")
    gzipped = path.name.lower().endswith(".gz")  # as nibabel tells them apart
    with path.open("rb") as file:
        head = file.read(4)
    header_size = {int.from_bytes(head, order) for order in ("little", "big")}
    if (gzipped and header_size & {348, 540}) or (not gzipped and head[:2] == b"\x1f\x8b"):
        right = nifti_stem(path.name) + (".nii" if gzipped else ".nii.gz")  # nibabel goes by it
        raise UserError(f"{path}: {'not ' if gzipped else ''}gzipped, unlike its name says; "
                        f"rename it {right}")
    return _volume(lambda: nib.load(path), lambda: Opener(path), str(path), path.stat().st_size,
                   gzipped)


def volume_from_bytes(data: bytes, where: str) -> Volume:
    """A 3D volume from the bytes of a NIfTI-1 or NIfTI-2 file, gzipped or not (a member of an
    archive); only as many bytes are unpacked as its header says it holds."""

    gzipped = data[:2] == b"\x1f\x8b"

    def stream() -> BinaryIO:
        raw = io.BytesIO(data)
        return gzip.GzipFile(fileobj=raw) if gzipped else raw

    def load() -> nib.Nifti1Image:
        with stream() as opened:  # the header's first field, its size, tells the version
            size = opened.read(4)
        nifti_2 = NIFTI_2_HEADER_SIZE in {int.from_bytes(size, end) for end in ("little", "big")}
        return (nib.Nifti2Image if nifti_2 else nib.Nifti1Image).from_stream(stream())

    return _volume(load, stream, where, len(data), gzipped)


def _volume(load, stream, where: str, stored: int, gzipped: bool) -> Volume:
    """Read a volume of `stored` bytes (`stream` opens them, unpacked); its header is checked
    before the voxels are read, and the voxels after."""
    try:
        with _nibabel_silenced():
            image = load()
            if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
                raise ImageFileError(f"a {type(image).__name__}, not NIfTI")
            with stream() as opened:
                spacing = _pixdim_as_written(image, opened)
            _check_header(image, where, stored, gzipped, spacing)
            volume = np.asanyarray(image.dataobj).reshape(image.shape[:3])  # (X, Y, Z, 1): 3D
    except _READ_ERRORS as exc:
        raise UserError(
            f"{where}: not a readable NIfTI file ({' '.join(str(exc).split())[:150]}); it may be "
            "truncated or corrupt"
        ) from None
    _check_finite(volume, where)
    return Volume(volume, image.affine, image.header, where)


def _pixdim_as_written(image: nib.Nifti1Image, stream: BinaryIO) -> np.ndarray:
    """The header's three voxel sizes as the file has them: nibabel's header check turns a zero
    into 1 mm (and a negative size into its absolute value) without a word."""
    header = type(image.header)
    block = stream.read(header.template_dtype.itemsize)
    return header(block, image.header.endianness, check=False)["pixdim"][1:4]


def _check_header(image: nib.Nifti1Image, where: str, stored: int, gzipped: bool,
                  spacing: np.ndarray) -> None:
    """Refuse a volume that is not 3D (trailing axes of length 1 aside), empty, not of real
    numbers, too large to hold in memory or for its file to hold (nibabel would allocate what
    the header claims before reading), or without a voxel size."""
    shape, dtype = image.shape, image.get_data_dtype()
    if len(shape) < 3 or any(size != 1 for size in shape[3:]):
        raise UserError(f"{where}: {len(shape)}D volume of shape {shape}; need a 3D one (axes "
                        "after the third may only have length 1)")
    shape = shape[:3]
    if min(shape) < 1:
        raise UserError(f"{where}: shape {shape} holds no voxels; need a 3D volume with at "
                        "least one voxel along each axis")
    if dtype.kind not in "iufb":
        kind = "RGB colour" if dtype.names else f"type {dtype}"
        raise UserError(f"{where}: voxels of {kind}; need real numbers (CT or labels)")
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise UserError(f"{where}: shape {shape}: {voxels} voxels, more than the {MAX_VOXELS} "
                        "a volume may have here; crop or resample it")
    needed = int(image.header.get_data_offset()) + voxels * dtype.itemsize
    if needed > stored * (DEFLATE_MAX_RATIO if gzipped else 1):
        raise UserError(f"{where}: its header promises {needed} bytes of voxels, more than its "
                        f"{stored} bytes{' (gzipped)' if gzipped else ''} can hold; it is "
                        "truncated, or its header is damaged")
    if not (np.isfinite(spacing).all() and spacing.all()):
        raise UserError(f"{where}: voxel spacing (header pixdim) "
                        f"{' x '.join(f'{size:g}' for size in spacing)} mm has a size that is zero "
                        "or not a number; set pixdim to the voxel size in mm")


def _check_finite(data: np.ndarray, where: str) -> None:
    """Refuse voxels that are NaN or infinite: windowing and scores would quietly misread them."""
    if data.dtype.kind == "f":
        bad = data.size - np.count_nonzero(np.isfinite(data))
        if bad:
            raise UserError(f"{where}: NaN or infinite values in {plural(bad, 'voxel')} (of "
                            f"{data.size}); replace them with numbers (air is -1024 HU)")


def check_class_ids(volume: Volume, role: str, classes: int) -> None:
    """Refuse a label volume (`role`: "the label", for messages) with a voxel that is no class
    id 0..classes-1: negative, not a whole number, or too large."""
    data = volume.data
    if data.dtype.kind == "f" and (data != np.round(data)).any():
        raise UserError(f"{volume.where}: {role} holds values that are not whole numbers; "
                        "give a label map of class ids")
    low, high = data.min(), data.max()
    if low < 0:
        raise UserError(f"{volume.where}: {role} holds negative values (down to {low:g}); "
                        "give a label map of class ids")
    if high >= classes:
        raise UserError(f"{volume.where}: {role} holds values {low:g}..{high:g} but the classes "
                        f"are 0..{classes - 1}; give a label map of class ids")


def check_same_grid(label: Volume, other: Volume, fix: str) -> None:
    """Refuse a label whose voxel grid (shape or affine) is not `other`'s; `fix` says what to do."""
    if label.data.shape != other.data.shape:
        raise UserError(f"{label.where}: shape {label.data.shape} but {other.where} has "
                        f"{other.data.shape}; {fix}")
    if not np.allclose(label.affine, other.affine, rtol=0, atol=AFFINE_TOLERANCE):
        raise UserError(f"{label.where}: its affine differs from {other.where}'s, so they do "
                        f"not lie on the same voxel grid; {fix}")


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a gzipped NIfTI-1 with qform and sform set; no time stamp, so bytes are repeatable."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))


def write_like(path: Path, data: np.ndarray, source: Volume, scale: float | None = None) -> None:
    """Write `data` (the source's voxel grid, any trailing axes) with the source's affine, qform
    and sform, so a viewer lays it over the source; `scale` is stored as scl_slope (uint8
    probabilities 0..255 read back as 0..1). A NIfTI-2 source gives a NIfTI-2 file (its axes
    may be longer than NIfTI-1 can hold)."""
    kind = nib.Nifti2Image if isinstance(source.header, nib.Nifti2Header) else nib.Nifti1Image
    image = kind(data, source.affine)
    image.header["xyzt_units"] = source.header["xyzt_units"]  # as stored, a code nibabel lacks too
    for getter, setter in (("get_qform", image.set_qform), ("get_sform", image.set_sform)):
        affine, code = getattr(source.header, getter)(coded=True)
        setter(source.affine if affine is None else affine, code=int(code))
    image.header.set_slope_inter(scale if scale is not None else 1.0, 0.0)
    nib.save(image, path)


def has_patient_axes(affine: np.ndarray) -> bool:
    """Whether each voxel axis points along its own patient axis (no direction zero,
    non-finite or shared with another axis), as `to_display` needs."""
    if not np.isfinite(affine).all():
        return False
    return not np.isnan(orientations.io_orientation(affine)).any()


def _display_transform(affine: np.ndarray) -> np.ndarray:
    """The orientation transform from the file's voxel axes to (row, column, slice)."""
    current = orientations.io_orientation(affine)
    axial = int(np.flatnonzero(current[:, 0] == 2)[0])
    target = np.array([[1, -1], [0, -1], [2, current[axial, 1]]])
    return orientations.ornt_transform(current, target)


def to_display(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A view of a volume as (row, column, slice, ...), as radiologists view axial slices.

    Rows run from the patient's anterior to posterior, columns from the patient's right to
    left (nibabel orientation codes P, L); the axial axis keeps the file's direction, so slice
    indices are the file's. The affine must pass `has_patient_axes`. Writing into the view
    writes into `volume`.
    """
    return orientations.apply_orientation(volume, _display_transform(affine))


def from_display(display: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The inverse of `to_display`: a view of (row, column, slice, ...) in the file's order."""
    inverse = np.empty((3, 2))
    for axis, (target, flip) in enumerate(_display_transform(affine)):
        inverse[int(target)] = (axis, flip)  # display axis `target` goes back to `axis`
    return orientations.apply_orientation(display, inverse)


def display_slice(display: np.ndarray, index: int, window: tuple[float, float]) -> np.ndarray:
    """Axial slice `index` of a `to_display` view as the uint8 (h, w) image that training
    sees, at the volume's own size (prepare msd and volume inference both take it here)."""
    return window_to_uint8(np.ascontiguousarray(display[:, :, index]), window)


def window_to_uint8(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Hounsfield units clipped to `window` = (low, high) and scaled to 0..255, rounded."""
    low, high = window  # clipped before the cast, so no value overflows float32
    grey = (np.clip(plane, low, high).astype(np.float32) - low) * np.float32(255.0 / (high - low))
    return np.rint(grey).astype(np.uint8)


@contextlib.contextmanager
def _nibabel_silenced() -> Iterator[None]:
    """Keep nibabel from logging header problems on stderr: they come back as one UserError."""
    level = nibabel_logger.level
    nibabel_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        nibabel_logger.setLevel(level)
