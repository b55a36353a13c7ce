"""Pairing, mask colors, image reading and augmentation (numpy, Pillow and scipy: no keras).
The loader that batches them for Keras is in test_loader.py."""

import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from PIL import Image

from flexunet_k3.config import AugmentConfig
from flexunet_k3.data import masks
from flexunet_k3.data.augment import Augmenter, random_crop
from flexunet_k3.data.images import list_images, pair_files, read_image
from flexunet_k3.data.masks import colors_to_labels, labels_to_palette_image, read_mask
from flexunet_k3.errors import UserError

BW = [(0, 0, 0), (255, 255, 255)]
RGB3 = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
ALL_ON = AugmentConfig(
    enabled=True,
    hflip=True,
    vflip=True,
    rotation_angles=[-20, 15],
    shrink_ratios=[0.7],
    shear=0.2,
    elastic_alpha=300,
    elastic_sigma=6,
    brightness=0.2,
    contrast=0.2,
    probability=0.9,
)


def save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# ---- pairing ---------------------------------------------------------------------------------


def test_pairs_match_by_stem_whatever_the_order_and_extension(tmp_path):
    gray = np.zeros((4, 4), np.uint8)
    for name in ["c_2", "a_10", "b_1"]:
        save(gray, tmp_path / "images" / f"{name}.png")
    for name, suffix in [("b_1", ".bmp"), ("c_2", ".png"), ("a_10", ".tif")]:
        save(gray, tmp_path / "masks" / f"{name}{suffix}")
    np.savez(tmp_path / "masks" / "extra.npz", labels=gray)
    save(gray, tmp_path / "images" / "extra.jpg")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="notes.txt"):
        pairs = pair_files(tmp_path / "images", tmp_path / "masks")
    assert [(i.name, m.name) for i, m in pairs] == [
        ("a_10.png", "a_10.tif"),
        ("b_1.png", "b_1.bmp"),
        ("c_2.png", "c_2.png"),
        ("extra.jpg", "extra.npz"),
    ]


def test_names_pair_whatever_their_unicode_form(tmp_path):
    gray = np.zeros((4, 4), np.uint8)
    save(gray, tmp_path / "images" / "caf\u00e9_1.png")  # composed, as most tools write it
    save(gray, tmp_path / "masks" / "cafe\u0301_1.png")  # decomposed, as some macOS tools do
    [(image, mask)] = pair_files(tmp_path / "images", tmp_path / "masks")
    assert (image.name, mask.name) == ("caf\u00e9_1.png", "cafe\u0301_1.png")


def test_unpaired_files_are_listed_in_one_error(tmp_path):
    gray = np.zeros((4, 4), np.uint8)
    for name in ["a", "b", "only_image1", "only_image2"]:
        save(gray, tmp_path / "images" / f"{name}.png")
    for name in ["a", "b", "only_mask"]:
        save(gray, tmp_path / "masks" / f"{name}.png")
    with pytest.raises(UserError) as error:
        pair_files(tmp_path / "images", tmp_path / "masks")
    message = str(error.value)
    assert "\n" not in message
    assert "2 images without a mask (only_image1.png, only_image2.png)" in message
    assert "1 mask without an image (only_mask.png)" in message


def test_missing_or_empty_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="folder not found"):
        list_images(tmp_path / "nowhere")
    with pytest.raises(UserError, match="a.png: a file, not a folder; check the path"):
        list_images(save(np.zeros((2, 2), np.uint8), tmp_path / "a.png"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(UserError, match="no image files .*put the files there"):
        list_images(tmp_path / "empty")
    (tmp_path / "empty" / "lung_001.nii.gz").write_bytes(b"")
    (tmp_path / "empty" / "lung_002.NII").write_bytes(b"")
    with pytest.raises(UserError, match="no image files .*holds 2 NIfTI volumes: give volumes "
                                        "with --volumes, or make slices of them with"):
        list_images(tmp_path / "empty")


# ---- masks -----------------------------------------------------------------------------------


def test_colors_map_to_the_nearest_class_and_off_colors_are_counted():
    rgb = np.array([[[0, 0, 0], [255, 0, 0], [240, 10, 0]], [[0, 250, 0], [20, 0, 0], [0, 255, 0]]])
    labels, off = colors_to_labels(rgb.astype(np.uint8), RGB3)
    assert labels.tolist() == [[0, 1, 1], [2, 0, 2]]
    assert labels.dtype == np.uint8 and off == 3


def test_gray_masks_read_as_gray_colors():
    gray = np.array([[0, 255, 100, 200]], np.uint8)
    labels, off = colors_to_labels(gray, BW)
    assert labels.tolist() == [[0, 1, 0, 1]] and off == 2


def test_npz_masks_are_read_and_validated(tmp_path):
    labels = np.array([[0, 1], [2, 0]], np.int64)
    np.savez(tmp_path / "keyed.npz", labels=labels, other=labels)
    np.savez(tmp_path / "single.npz", labels[..., None])
    for name in ("keyed.npz", "single.npz"):
        read, off = read_mask(tmp_path / name, RGB3)
        assert read.tolist() == labels.tolist() and read.dtype == np.uint8 and off == 0
    with pytest.raises(UserError, match=r"outside 0\.\.1"):
        read_mask(tmp_path / "keyed.npz", BW)
    np.savez(tmp_path / "float.npz", labels=labels.astype(float))
    with pytest.raises(UserError, match="integer"):
        read_mask(tmp_path / "float.npz", RGB3)
    np.savez(tmp_path / "two.npz", a=labels, b=labels)
    with pytest.raises(UserError, match="'labels'"):
        read_mask(tmp_path / "two.npz", RGB3)


def test_palette_image_round_trips(tmp_path):
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    img = labels_to_palette_image(labels, RGB3)
    assert img.mode == "P"
    assert np.asarray(img.convert("RGB"))[0, 1].tolist() == [255, 0, 0]
    img.save(tmp_path / "mask.png")
    read, off = read_mask(tmp_path / "mask.png", RGB3)
    assert read.tolist() == labels.tolist() and off == 0


# ---- masks of other depths, odd files --------------------------------------------------------


def test_16_and_32_bit_masks_hold_class_ids(tmp_path):
    ids = np.array([[0, 1, 2], [2, 1, 0]])
    Image.fromarray(ids.astype(np.uint16)).save(tmp_path / "ids16.png")
    Image.fromarray(ids.astype(np.int32)).save(tmp_path / "ids32.tif")
    for name in ("ids16.png", "ids32.tif"):
        labels, off = read_mask(tmp_path / name, RGB3)
        assert labels.tolist() == ids.tolist() and labels.dtype == np.uint8 and off == 0
    Image.fromarray((ids * 32767).astype(np.uint16)).save(tmp_path / "scaled.png")
    expected = r"scaled\.png: class ids 0\.\.65534 are outside 0\.\.2 \(a 16-bit mask holds"
    with pytest.raises(UserError, match=expected):
        read_mask(tmp_path / "scaled.png", RGB3)
    Image.fromarray(ids.astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(UserError, match="float.tif: a floating-point image"):
        read_mask(tmp_path / "float.tif", RGB3)


def test_odd_npz_masks_are_refused_in_one_line(tmp_path, monkeypatch):
    np.save(tmp_path / "plain.npy", np.zeros((2, 2), np.uint8))
    (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")  # an .npy, not an archive
    np.savez(tmp_path / "empty.npz", labels=np.zeros((0, 4), np.uint8))
    np.savez(tmp_path / "objects.npz", labels=np.array([[None]], object))
    for name, expected in [
        ("plain.npz", "plain.npz: cannot read mask (File is not a zip file)"),
        ("empty.npz", "empty.npz: expected a 2D integer label array, got uint8 (0, 4)"),
        ("objects.npz", "objects.npz: cannot read mask (Object arrays cannot be loaded"),
    ]:
        with pytest.raises(UserError) as info:
            read_mask(tmp_path / name, BW)
        assert expected in str(info.value) and "\n" not in str(info.value)
    np.savez(tmp_path / "big.npz", labels=np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(masks, "_MAX_NPZ_BYTES", 64 * 64)  # the header is more
    with pytest.raises(UserError, match="big.npz: the array 'labels' is too big for a mask"):
        read_mask(tmp_path / "big.npz", BW)


# ---- properties: any file is read, or refused in one line ------------------------------------

PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _encoded(array, suffix: str) -> bytes:
    buffer = io.BytesIO()
    if suffix == ".npz":
        np.savez(buffer, labels=array)
    else:
        Image.fromarray(array).save(buffer, format={".png": "PNG", ".tif": "TIFF"}[suffix])
    return buffer.getvalue()


SAMPLES = {
    suffix: [_encoded(np.arange(12, dtype=dtype).reshape(3, 4) % 3, suffix) for dtype in dtypes]
    for suffix, dtypes in [
        (".png", [np.uint8, np.uint16]),
        (".tif", [np.uint8, np.uint16, np.int32, np.float32]),
        (".npz", [np.uint8, np.int64]),
    ]
}


@st.composite
def damaged(draw, suffix):
    """A sample file of `suffix` with some bytes changed and maybe its end cut off."""
    data = bytearray(draw(st.sampled_from(SAMPLES[suffix])))
    for index, value in draw(st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=6)):
        data[index % len(data)] = value
    return bytes(data[: draw(st.integers(0, len(data)))])


def reads_or_refuses(path):
    readers = [lambda: read_mask(path, RGB3)]
    if path.suffix != ".npz":
        readers.append(lambda: read_image(path, 3))
    for read in readers:
        try:
            read()
        except UserError as exc:
            assert "\n" not in str(exc)


@PROPERTY
@given(suffix=st.sampled_from(sorted(SAMPLES)), data=st.data())
def test_any_bytes_as_a_mask_or_image_are_read_or_refused(tmp_path, suffix, data):
    content = data.draw(st.binary(max_size=200) | damaged(suffix))
    path = tmp_path / f"file{suffix}"
    path.write_bytes(content)
    reads_or_refuses(path)


@PROPERTY
@given(
    array=arrays(
        st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.bool_]),
        array_shapes(min_dims=1, max_dims=3, max_side=4),
    ),
    suffix=st.sampled_from(sorted(SAMPLES)),
)
def test_any_array_saved_as_a_mask_is_read_as_class_ids_or_refused(tmp_path, array, suffix):
    path = tmp_path / f"mask{suffix}"
    try:
        path.write_bytes(_encoded(array, suffix))
    except (TypeError, KeyError, OSError, ValueError):
        return  # Pillow cannot save it in this format
    try:
        labels, _ = read_mask(path, RGB3)
    except UserError as exc:
        assert "\n" not in str(exc)
    else:
        assert labels.dtype == np.uint8 and labels.ndim == 2 and labels.max() <= 2
        if suffix == ".npz" or array.dtype in (np.uint16, np.int32):  # class ids, read as such
            assert np.array_equal(labels, array.reshape(labels.shape))


# ---- images ----------------------------------------------------------------------------------


def test_images_are_converted_to_the_configured_channels(tmp_path):
    gray = save(np.full((5, 6), 90, np.uint8), tmp_path / "gray.png")
    color = np.zeros((5, 6, 3), np.uint8)
    color[..., 0] = 255
    rgb = save(color, tmp_path / "rgb.bmp")
    rgba = save(np.dstack([color, np.zeros((5, 6), np.uint8)]), tmp_path / "rgba.png")
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((5, 6), 65535, np.uint16)).save(deep)
    assert read_image(gray, 3).shape == (5, 6, 3) and read_image(gray, 3)[0, 0].tolist() == [90] * 3
    assert read_image(rgb, 3)[0, 0].tolist() == [255, 0, 0]
    assert read_image(rgba, 3)[0, 0].tolist() == [255, 0, 0]
    assert read_image(rgb, 1).shape == (5, 6, 1) and read_image(rgb, 1)[0, 0, 0] == 76
    assert read_image(deep, 1).dtype == np.uint8 and read_image(deep, 1).max() == 255


def test_an_image_is_read_turned_as_its_exif_orientation_says(tmp_path):
    stored = np.zeros((30, 40), np.uint8)  # 40 wide, 30 high as stored
    stored[:, :4] = 255  # the stored left edge: the top edge once turned 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=100)
    shown = read_image(tmp_path / "photo.jpg", 1)[..., 0]
    assert shown.shape == (40, 30)
    assert shown[:2].mean() > 200 and shown[-2:].mean() < 50


def test_unreadable_image_names_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match="broken.png"):
        read_image(broken, 3)
    floats = tmp_path / "floats.tif"
    Image.fromarray(np.full((5, 6), 0.7, np.float32)).save(floats)  # would be read as black
    with pytest.raises(UserError, match="floats.tif: cannot read image .floating-point pixels"):
        read_image(floats, 1)


# ---- augmentation ----------------------------------------------------------------------------


def square_pair(size=64):
    labels = np.zeros((size, size), np.uint8)
    labels[20:44, 12:36] = 2
    image = np.where(labels[..., None] > 0, 220, 30).astype(np.uint8).repeat(3, axis=2)
    return image, labels


def test_augmentation_moves_image_and_mask_together():
    image, labels = square_pair()
    augmenter = Augmenter(ALL_ON.model_copy(update={"brightness": 0, "contrast": 0}), seed=3)
    changed = 0
    for index in range(12):
        out_image, out_labels = augmenter(image, labels, augmenter.rng(0, index))
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert set(np.unique(out_labels)) <= {0, 2}
        inside, outside = out_image[out_labels == 2, 0], out_image[out_labels == 0, 0]
        assert (inside > 125).mean() > 0.95 and (outside < 125).mean() > 0.95
        changed += not np.array_equal(out_labels, labels)
    assert changed >= 10


def test_augmentation_is_deterministic_per_seed():
    image, labels = square_pair()

    def run(seed, epoch):
        augmenter = Augmenter(ALL_ON, seed)
        return augmenter(image, labels, augmenter.rng(epoch, 5))

    first, again, other = run(1, 0), run(1, 0), run(2, 0)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], run(1, 1)[0])


def test_intensity_changes_only_the_image():
    image, labels = square_pair()
    config = AugmentConfig(hflip=False, rotation_angles=[], brightness=0.3, probability=1.0)
    augmenter = Augmenter(config, seed=0)
    out_image, out_labels = augmenter(image, labels, augmenter.rng(0, 0))
    assert np.array_equal(out_labels, labels) and not np.array_equal(out_image, image)


def test_random_crop_cuts_the_same_window_of_image_and_labels():
    image, labels = square_pair()
    marked = image.copy()
    marked[..., 1], marked[..., 2] = np.mgrid[:64, :64]  # each pixel's row and column
    windows = set()
    for seed in range(20):
        out_image, out_labels = random_crop(marked, labels, 16, 0.0, np.random.default_rng(seed))
        assert out_image.shape == (16, 16, 3) and out_labels.shape == (16, 16)
        top, left = out_image[0, 0, 1:]
        assert np.array_equal(marked[top : top + 16, left : left + 16], out_image)
        assert np.array_equal(labels[top : top + 16, left : left + 16], out_labels)
        windows.add((top, left))
    assert len(windows) > 10


def test_random_crop_holds_foreground_as_often_as_asked():
    labels = np.zeros((64, 64), np.uint8)
    labels[60, 2] = 1  # one foreground pixel in a corner: a random window rarely holds it
    image = np.zeros((64, 64, 1), np.uint8)
    held = [
        random_crop(image, labels, 16, share, np.random.default_rng(seed))[1].any()
        for share in (1.0, 0.0) for seed in range(40)
    ]
    assert all(held[:40]) and sum(held[40:]) < 10
    again = random_crop(image, labels, 16, 1.0, np.random.default_rng(5))[1]
    assert np.array_equal(again, random_crop(image, labels, 16, 1.0, np.random.default_rng(5))[1])


def test_the_mosaic_keeps_each_tiles_shape():
    from flexunet_k3.inference import mosaic

    wide = np.full((100, 200, 3), 255, np.uint8)  # fitted to 64 x 32, centred
    canvas = mosaic([wide, np.full((10, 10, 3), 9, np.uint8)], tile=64)
    assert canvas.shape == (64, 128, 3)
    assert (canvas[16:48, :64] == 255).all() and not canvas[:16, :64].any()
    assert not canvas[48:, :64].any() and (canvas[:, 64:] == 9).all()


def test_a_very_large_image_is_named_in_the_warning(tmp_path, monkeypatch):
    from flexunet_k3.data.images import open_image

    path = tmp_path / "a_1.png"
    Image.new("L", (12, 12)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow warns above, refuses above 200
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # as images.py
        assert open_image(path).size == (12, 12)
    assert [str(w.message) for w in caught] == [
        f"{path}: 12x12 pixels, a very large image; reading it takes much memory"]
