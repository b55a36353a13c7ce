"""Mask colors <-> class ids (numpy + Pillow, no keras)."""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from flexunet_k3.data.images import check_regular_file, open_image, read_image
from flexunet_k3.errors import UserError, first_line, plural

Color = Sequence[int]
_GRAYS = np.repeat(np.arange(256, dtype=np.int32)[:, None], 3, axis=1)
# The largest image Pillow decodes, 8 bytes a pixel: an .npz member beyond it is not a mask.
_MAX_NPZ_BYTES = 2 * Image.MAX_IMAGE_PIXELS * 8


def _nearest(pixels: np.ndarray, colors: Sequence[Color]) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest color, exact match?) for each row of an (N, 3) int array."""
    best = np.zeros(len(pixels), np.uint8)
    best_distance = np.full(len(pixels), np.iinfo(np.int32).max, np.int32)
    for class_id, color in enumerate(colors):
        distance = ((pixels - np.asarray(color, np.int32)) ** 2).sum(axis=1, dtype=np.int32)
        closer = distance < best_distance
        best[closer] = class_id
        best_distance[closer] = distance[closer]
    return best, best_distance == 0


def colors_to_labels(rgb: np.ndarray, colors: Sequence[Color]) -> tuple[np.ndarray, int]:
    """(uint8 (H, W) class ids of the nearest class color, count of off-color pixels).

    `rgb` is (H, W, 3) or gray (H, W), where a gray value g stands for the color (g, g, g).
    """
    if rgb.ndim == 2:  # a 256-entry lookup table serves every gray mask
        ids, exact = _nearest(_GRAYS, colors)
        return np.take(ids, rgb), int(np.count_nonzero(np.take(~exact, rgb)))
    ids, exact = _nearest(rgb.reshape(-1, 3).astype(np.int32), colors)
    return ids.reshape(rgb.shape[:2]), int(np.count_nonzero(~exact))


def _class_ids(path: Path, labels: np.ndarray, num_classes: int, hint: str = "") -> np.ndarray:
    """uint8 `labels`, or a UserError where an id is not a class."""
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(
            f"{path}: class ids {int(labels.min())}..{int(labels.max())} are outside "
            f"0..{num_classes - 1}{hint}; check data.classes"
        )
    return labels.astype(np.uint8)


def _read_npz(path: Path, num_classes: int) -> np.ndarray:
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            key = "labels" if "labels" in members else [*members][0] if len(members) == 1 else None
            if key is None:
                raise UserError(
                    f"{path}: holds arrays {sorted(members)}; store the mask under the key 'labels'"
                )
            if archive.getinfo(members[key]).file_size > _MAX_NPZ_BYTES:
                raise UserError(f"{path}: the array {key!r} is too big for a mask")
            with archive.open(members[key]) as handle:
                labels = np.lib.format.read_array(handle, allow_pickle=False)
    except UserError:
        raise
    except Exception as exc:  # zipfile, its decompressors and numpy raise many types on damage
        raise UserError(
            f"{path}: cannot read mask ({first_line(exc)}); replace or remove the file"
        ) from None
    labels = labels.squeeze(axis=-1) if labels.ndim == 3 and labels.shape[-1] == 1 else labels
    if labels.ndim != 2 or not labels.size or labels.dtype.kind not in "iub":
        raise UserError(
            f"{path}: expected a 2D integer label array, got {labels.dtype} {labels.shape}; "
            "save the mask as a 2D array of integer class ids"
        )
    return _class_ids(path, labels, num_classes)


def read_mask(path: Path, colors: Sequence[Color]) -> tuple[np.ndarray, int]:
    """(uint8 (H, W) class ids, off-color pixel count) from a color/gray image or an .npz.

    An 8-bit image holds class colors; a 16- or 32-bit integer one (and an .npz) class ids.
    """
    path = Path(path)
    if path.suffix.lower() == ".npz":  # an image is checked where it is opened
        check_regular_file(path)
        return _read_npz(path, len(colors)), 0
    img = open_image(path, keep_depth=True)
    if img.mode == "F":
        raise UserError(
            f"{path}: a floating-point image; save a mask as 8-bit class colors or as integer "
            "class ids"
        )
    if img.mode.startswith("I"):
        bits = 16 if img.mode.startswith("I;16") else 32
        hint = f" (a {bits}-bit mask holds class ids, not colors)"
        return _class_ids(path, np.asarray(img), len(colors), hint), 0
    return colors_to_labels(np.asarray(img), colors)


def read_pair(image_path: Path, mask_path: Path, channels: int, colors: Sequence[Color]):
    """(uint8 (H, W, channels) image, uint8 (H, W) class ids, off-color pixel count) at the files'
    own size; a UserError where the mask's size is not its image's."""
    image = read_image(image_path, channels)
    labels, off_color = read_mask(mask_path, colors)
    if labels.shape != image.shape[:2]:
        raise UserError(
            f"{mask_path}: {labels.shape[1]}x{labels.shape[0]} pixels but its image "
            f"{image_path} has {image.shape[1]}x{image.shape[0]}; a mask needs its image's size"
        )
    return image, labels, off_color


def warn_off_color(folder: Path, per_mask: np.ndarray, stacklevel: int) -> None:
    """Warn if some masks in `folder` had pixels that are not exactly a class color
    (`per_mask`: each mask's count, as `read_mask` returns it)."""
    if per_mask.any():
        pixels, masks = int(per_mask.sum()), int(np.count_nonzero(per_mask))
        warnings.warn(
            f"{folder}: {plural(pixels, 'pixel')} in {plural(masks, 'mask')} "
            f"{'is' if pixels == 1 else 'are'} not exactly a class color (mapped to the nearest "
            "class); check data.classes (8-bit masks hold class colors, not class ids)",
            stacklevel=stacklevel + 1,
        )


def labels_to_palette_image(labels: np.ndarray, colors: Sequence[Color]) -> Image.Image:
    """A palette ("P" mode) image whose pixel values are class ids and palette the class colors."""
    img = Image.fromarray(np.asarray(labels, np.uint8))
    img.putpalette([int(c) for color in colors for c in color])
    return img
