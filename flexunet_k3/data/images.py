"""Reading, resizing, listing and pairing image files (numpy + Pillow, no keras)."""

from __future__ import annotations

import unicodedata
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from flexunet_k3.errors import UserError, first_line, listing, plural
from flexunet_k3.files import describe

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (*IMAGE_SUFFIXES, ".npz")
_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")  # those of IMAGE_SUFFIXES, whatever the suffix says
_GRAY_BANDS = {"L", "1", "A", "I", "F"}
_DEEP_GRAY = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_SHOWN = 5


# Pillow's own warning for a very large image names no file: open_image gives one that does
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def open_image(path: Path, keep_depth: bool = False) -> Image.Image:
    """A decoded image in mode "L" (gray) or "RGB", turned as its EXIF orientation says; alpha
    dropped, 16- and 32-bit gray scaled to 8-bit, or kept as they are (modes "I;16", "I", "F")
    when `keep_depth`. A file of several
    frames (a multi-page TIFF, an animated PNG) is refused: which one is meant is not known."""
    check_regular_file(path)
    try:
        with Image.open(path, formats=_FORMATS) as img:
            _warn_if_huge(path, img)
            frames = getattr(img, "n_frames", 1)
            if frames == 1:
                ImageOps.exif_transpose(img, in_place=True)  # as viewers show it (a phone's JPEG)
                return img if keep_depth and img.mode in _DEEP_GRAY else _to_8bit(img)
    except Exception as exc:  # Pillow's decoders raise many types on a damaged file
        raise UserError(
            f"{path}: cannot read image ({first_line(exc)}); replace or remove the file"
        ) from None
    raise UserError(f"{path}: holds {frames} frames; give one image per file")


def _warn_if_huge(path: Path, img: Image.Image) -> None:
    """Warn, naming the file, where Pillow would (more pixels than Image.MAX_IMAGE_PIXELS; it
    refuses twice as many as a possible decompression bomb)."""
    if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
        warnings.warn(f"{path}: {img.width}x{img.height} pixels, a very large image; reading "
                      "it takes much memory", UserWarning, stacklevel=3)


def check_regular_file(path: Path) -> None:
    """Refuse a pipe, device or socket named like an image: reading it could wait for ever."""
    if not path.is_file():
        raise UserError(f"{path}: {describe(path)}; give an image file, or move it away")


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in ("L", "RGB"):
        return img
    if img.mode == "F":  # 0..1? Hounsfield units? Converting would clip it to black or white
        raise ValueError("floating-point pixels, which have no agreed 8-bit scale; save it as "
                         "8- or 16-bit")
    if img.mode.startswith("I"):  # 16- or 32-bit integer gray: 0..65535 -> 0..255
        values = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    return img.convert("L" if set(img.getbands()) <= _GRAY_BANDS else "RGB")


def read_image(path: Path, channels: int) -> np.ndarray:
    """An image file as uint8 (H, W, channels): gray is repeated to RGB, RGB is made gray."""
    img = open_image(path).convert("L" if channels == 1 else "RGB")
    return np.asarray(img).reshape(img.height, img.width, channels)


def to_float(images: np.ndarray, normalize: bool) -> np.ndarray:
    """uint8 images as float32: scaled to 0..1 when `normalize`, else kept at 0..255."""
    return np.multiply(images, np.float32(1 / 255 if normalize else 1), dtype=np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, C) image to `size` = (height, width)."""
    if image.shape[:2] == tuple(size):
        return image
    channels = image.shape[2]
    img = Image.fromarray(image[..., 0] if channels == 1 else image)
    resized = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized).reshape(size[0], size[1], channels)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 (H, W) label map, so ids stay valid."""
    if labels.shape == tuple(size):
        return labels
    img = Image.fromarray(labels).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(img)


def resize_probabilities(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of float32 (H, W, C) class probabilities to `size` = (height, width),
    channel by channel (weights sum to 1, so each pixel's probabilities still do)."""
    if probabilities.shape[:2] == tuple(size):
        return probabilities
    return np.stack([
        np.asarray(Image.fromarray(channel).resize((size[1], size[0]), Image.Resampling.BILINEAR))
        for channel in np.moveaxis(np.ascontiguousarray(probabilities, np.float32), -1, 0)
    ], axis=-1)


def list_images(folder: Path, suffixes=IMAGE_SUFFIXES) -> tuple[list[Path], list[str]]:
    """(sorted image files, names of other files) in `folder`; hidden files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        problem = "a file, not a folder" if folder.exists() else "folder not found"
        raise UserError(f"{folder}: {problem}; check the path")
    paths, skipped = files_in(folder, suffixes)
    if not paths:
        from .nifti import is_nifti

        volumes = sum(is_nifti(path.name) for path in skipped)
        advice = (f"it holds {plural(volumes, 'NIfTI volume')}: give volumes with --volumes, or "
                  "make slices of them with `flexunet prepare msd`" if volumes else
                  "put the files there or fix the path in the config")
        raise UserError(f"{folder}: no image files ({' '.join(suffixes)}) found; {advice}")
    return paths, [path.name for path in skipped]


def files_in(folder: Path, suffixes=IMAGE_SUFFIXES) -> tuple[list[Path], list[Path]]:
    """(sorted files of the folder `folder` with one of `suffixes`, its other files); hidden
    files and subfolders are passed over."""
    paths, others = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        (paths if path.suffix.lower() in suffixes else others).append(path)
    return paths, others


def image_files(folder: Path, suffixes=IMAGE_SUFFIXES) -> list[Path]:
    """`list_images`, warning about the files it skipped."""
    paths, skipped = list_images(folder, suffixes)
    if skipped:
        warnings.warn(f"{folder}: skipped non-image files: {listing(skipped, _SHOWN)}",
                      stacklevel=2)
    return paths


def _by_stem(folder: Path, suffixes) -> dict[str, Path]:
    """Files by stem, in Unicode's composed form (macOS tools may write `é` decomposed)."""
    found: dict[str, Path] = {}
    for path in image_files(folder, suffixes):
        stem = unicodedata.normalize("NFC", path.stem)
        if stem in found:
            raise UserError(
                f"{folder}: {found[stem].name} and {path.name} share the name "
                f"{stem!r}; keep one of them"
            )
        found[stem] = path
    return found


def pair_files(
    images_dir: Path, masks_dir: Path, image_suffixes=IMAGE_SUFFIXES
) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by file stem, sorted by name; a UserError if any is alone."""
    images = _by_stem(images_dir, image_suffixes)
    masks = _by_stem(masks_dir, MASK_SUFFIXES)
    lonely_images = sorted(images.keys() - masks.keys())
    lonely_masks = sorted(masks.keys() - images.keys())
    if lonely_images or lonely_masks:
        problems = []
        if lonely_images:
            names = [images[stem].name for stem in lonely_images]
            problems.append(
                f"{plural(len(names), 'image')} without a mask ({listing(names, _SHOWN)})"
            )
        if lonely_masks:
            names = [masks[stem].name for stem in lonely_masks]
            problems.append(
                f"{plural(len(names), 'mask')} without an image ({listing(names, _SHOWN)})"
            )
        raise UserError(
            f"{images_dir} and {masks_dir} do not pair up: {'; '.join(problems)}; "
            "each image needs a mask with the same file name (any extension)"
        )
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def check_unique_stems(paths: list[Path]) -> None:
    """Refuse images whose masks would share a name (`a.png`, `a.jpg`: both `a.png`)."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise UserError(
                f"{path.parent}: {seen[path.stem].name} and {path.name} would both be written "
                f"as {path.stem}.png; rename one of them"
            )
        seen[path.stem] = path
