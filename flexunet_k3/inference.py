"""Inference. The core turns images into class probabilities at each image's own size; the
front-ends write them: here image folders (palette PNG masks named like their inputs, overlays,
a mosaic), in `volume_inference` NIfTI volumes.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from flexunet_k3 import scores
from flexunet_k3.config import Config
from flexunet_k3.data.images import (
    check_unique_stems,
    list_images,
    read_image,
    resize_image,
    resize_probabilities,
    to_float,
)
from flexunet_k3.data.masks import labels_to_palette_image
from flexunet_k3.errors import UserError
from flexunet_k3.files import refuse_overwriting, replacing, staged
from flexunet_k3.progress import track

OVERLAY_ALPHA = 0.45
# Shown instead of gray class colors (a white tumor mask would vanish on a gray CT).
DISPLAY_COLORS = ((255, 40, 40), (40, 220, 40), (60, 120, 255), (255, 200, 0), (220, 0, 220))
MOSAIC_TILE = 192
MOSAIC_MAX_TILES = 16


def iter_probabilities(model, images: Iterable[np.ndarray], config: Config) -> Iterator[np.ndarray]:
    """float32 (h, w, C) class probabilities for each uint8 (h, w, channels) image, in order
    (channels: the model's, or 1 for gray images that the model takes as color).

    Images go through the model in batches of infer.batch_size (the last one padded, so a
    compiled model sees one shape), resized to its input size and scaled as in training. The
    probabilities are resized back to each image's size (bilinear: they still sum to 1).
    With infer.mirror, those of each image and of its horizontal flip are averaged.
    Only one batch is held at a time.
    """
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(image)
        if len(batch) == config.infer.batch_size:
            yield from _predict_batch(model, batch, config)
            batch = []
    if batch:
        yield from _predict_batch(model, batch, config)


def predict_probabilities(model, images: Iterable[np.ndarray], config: Config) -> np.ndarray:
    """float32 (N, H, W, C) class probabilities for uint8 (N, H, W, channels) images."""
    return np.stack(list(iter_probabilities(model, images, config)))


def labels_of(probabilities: np.ndarray) -> np.ndarray:
    """uint8 class ids: the argmax of the probabilities (> 0.5 for one sigmoid channel)."""
    return scores.predicted_labels(probabilities).astype(np.uint8)


def _predict_batch(model, images: list[np.ndarray], config: Config) -> Iterator[np.ndarray]:
    m = config.model
    size = (m.image_height, m.image_width)
    batch = np.stack([resize_image(image, size) for image in images])
    if batch.shape[3] != m.image_channels:  # gray images for a color model, repeated after resize
        batch = np.repeat(batch, m.image_channels, axis=3)
    batch = to_float(batch, not m.input_normalize)
    probabilities = predict_batch(model, batch, config.infer.batch_size)
    if config.infer.mirror:
        flipped = predict_batch(model, np.ascontiguousarray(batch[:, :, ::-1]),
                                config.infer.batch_size)
        probabilities = (probabilities + flipped[:, :, ::-1]) / 2
    for image, output in zip(images, probabilities, strict=True):
        yield resize_probabilities(output, image.shape[:2])


def predict_batch(model, batch: np.ndarray, batch_size: int) -> np.ndarray:
    """float32 model output for a float batch of at most `batch_size` images. A shorter batch
    is padded to `batch_size` and cut back: a compiled model sees one shape, and data-parallel
    devices get equal shares."""
    padding = batch_size - len(batch)
    if padding:
        batch = np.concatenate([batch, np.zeros((padding, *batch.shape[1:]), batch.dtype)])
    output = np.asarray(model.predict_on_batch(batch), dtype=np.float32)
    return output[: batch_size - padding]


def overlay_palette(colors) -> np.ndarray:
    """(C, 3) tint colors: the class colors, gray ones replaced by a display color."""
    return np.asarray([
        DISPLAY_COLORS[(class_id - 1) % len(DISPLAY_COLORS)] if len(set(color)) == 1 else color
        for class_id, color in enumerate(colors)
    ], np.float32)


def overlay(image: np.ndarray, labels: np.ndarray, colors, alpha: float = OVERLAY_ALPHA):
    """uint8 RGB: the image with each foreground class tinted (see `overlay_palette`)."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    tinted = rgb.astype(np.float32)
    palette = overlay_palette(colors)
    foreground = labels > 0
    tinted[foreground] = (1 - alpha) * tinted[foreground] + alpha * palette[labels[foreground]]
    return tinted.round().astype(np.uint8)


def mosaic(tiles: list[np.ndarray], tile: int = MOSAIC_TILE) -> np.ndarray:
    """uint8 RGB tiles laid out in a near-square grid, each fitted into tile x tile (its shape
    kept, centred on black)."""
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    canvas = np.zeros((rows * tile, columns * tile, 3), np.uint8)
    for index, image in enumerate(tiles):
        row, column = divmod(index, columns)
        scale = tile / max(image.shape[:2])
        height, width = (max(1, round(side * scale)) for side in image.shape[:2])
        top, left = row * tile + (tile - height) // 2, column * tile + (tile - width) // 2
        canvas[top:top + height, left:left + width] = resize_image(image, (height, width))
    return canvas


def write_predictions(
    model,
    paths: list[Path],
    config: Config,
    output_dir: Path,
    *,
    prefix: str = "",
    overlays_dir: Path | None = None,
    mosaic_path: Path | None = None,
    description: str | None = None,
) -> None:
    """Predict `paths` in batches; write `{prefix}{stem}.png` palette masks at each input's size.

    Optionally also overlays (image with class colors) and one mosaic of the first overlays.
    `description` shows a progress bar with that label.
    """
    colors = [spec.color for spec in config.data.classes]
    images = (read_image(path, config.model.image_channels) for path in paths)
    predicted = zip(paths, iter_probabilities(model, images, config), strict=True)
    if description:
        predicted = track(predicted, description, total=len(paths))
    output_dir.mkdir(parents=True, exist_ok=True)
    tiles = []
    for path, probabilities in predicted:
        labels = labels_of(probabilities)
        save_image(labels_to_palette_image(labels, colors), output_dir / f"{prefix}{path.stem}.png")
        if overlays_dir is None and mosaic_path is None:
            continue
        tinted = overlay(read_image(path, 3), labels, colors)
        if overlays_dir is not None:
            overlays_dir.mkdir(parents=True, exist_ok=True)
            save_image(Image.fromarray(tinted), overlays_dir / f"{prefix}{path.stem}.png")
        if len(tiles) < MOSAIC_MAX_TILES:
            tiles.append(tinted)
    if mosaic_path is not None and tiles:
        mosaic_path.parent.mkdir(parents=True, exist_ok=True)
        save_image(Image.fromarray(mosaic(tiles)), mosaic_path)


def save_image(image: Image.Image, path: Path) -> None:
    """Save a PNG atomically (`replacing`): a kill while it is written leaves no partial file
    under its name (epoch-change masks are written straight into the run folder)."""
    with replacing(path) as temporary:
        image.save(temporary, format="PNG")


@dataclass
class InferResult:
    written: int
    skipped: list[str]
    output_dir: Path
    files: list[str]  # all written, relative to output_dir


def infer_folder(
    model, config: Config, images_dir: Path, output_dir: Path, *, with_overlays: bool,
    overwrite: bool = False, owned: Collection[Path] = (),
) -> InferResult:
    """Masks for every image in `images_dir` (other files are skipped and named in the result).

    Overlays go to `output_dir/overlays/`, their mosaic to `output_dir/mosaic/mosaic.png`
    (subfolders, so the output folder holds only masks and can be scored as it is). Files of
    the same names already in `output_dir` are refused unless `overwrite` or `owned`. Files
    are written beside `output_dir` first and moved in once all are done: an unreadable image
    or a Ctrl-C leaves `output_dir` as it was.
    """
    paths, skipped = list_images(images_dir)
    if output_dir.resolve() == images_dir.resolve():
        raise UserError(f"{output_dir}: is the input folder; choose another --output")
    check_unique_stems(paths)
    names = [f"{path.stem}.png" for path in paths]
    if with_overlays:
        names += [f"overlays/{name}" for name in names] + ["mosaic/mosaic.png"]
    refuse_overwriting(output_dir, names, overwrite, owned)
    with staged(output_dir) as staging:
        write_predictions(
            model, paths, config, staging,
            overlays_dir=staging / "overlays" if with_overlays else None,
            mosaic_path=staging / "mosaic" / "mosaic.png" if with_overlays else None,
            description="inferring",
        )
    return InferResult(len(paths), skipped, output_dir, names)
