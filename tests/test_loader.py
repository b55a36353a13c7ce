"""The streaming loader on this backend: batches, shuffling, caches, warnings, workers (pairing,
mask colors, image reading and augmentation, which need no keras: test_images.py)."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_images import ALL_ON, BW, save

from flexunet_k3.config import Config
from flexunet_k3.data.augment import Augmenter
from flexunet_k3.data.dataset import SegmentationDataset, dataset_from_config
from flexunet_k3.data.images import pair_files, resize_labels
from flexunet_k3.errors import UserError


def write_split(root, count=5, size=(24, 32), seed=0):
    """`count` gray image/mask PNG pairs, each image bright where its mask is white."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        mask = np.zeros(size, np.uint8)
        top, left = rng.integers(0, 12, 2)
        mask[top : top + 8, left : left + 10] = 255
        image = (rng.integers(0, 60, size) + (mask > 0) * 180).astype(np.uint8)
        save(image, root / "images" / f"{index:03d}_1.png")
        save(mask, root / "masks" / f"{index:03d}_1.png")
    return root


def make_dataset(root, **kwargs):
    pairs = pair_files(root / "images", root / "masks")
    options = {"image_size": (24, 32), "channels": 3, "colors": BW, "batch_size": 2}
    return SegmentationDataset(pairs, **{**options, **kwargs})


def all_batches(dataset):
    return [dataset[index] for index in range(len(dataset))]


# ---- the dataset -----------------------------------------------------------------------------


def test_other_sizes_are_resized_and_labels_stay_ids(tmp_path):
    root = write_split(tmp_path, count=2, size=(48, 40))
    images, labels = make_dataset(root)[0]
    assert images.shape == (2, 24, 32, 3) and labels.shape == (2, 24, 32)
    assert set(np.unique(labels)) <= {0, 1}
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4) % 3
    assert set(np.unique(resize_labels(ids, (7, 9)))) <= {0, 1, 2}


def test_batches_have_the_right_shapes_and_types(tmp_path):
    dataset = make_dataset(write_split(tmp_path), normalize=False)
    assert len(dataset) == 3
    batches = all_batches(dataset)
    images, labels = batches[0]
    assert images.shape == (2, 24, 32, 3) and images.dtype == np.float32
    assert labels.shape == (2, 24, 32) and labels.dtype == np.int32
    assert images.max() > 200 and set(np.unique(labels)) == {0, 1}
    assert batches[-1][0].shape[0] == 1
    assert make_dataset(tmp_path)[0][0].max() <= 1.0
    with pytest.raises(IndexError):
        dataset[3]


def test_processes_get_their_parts_of_whole_per_device_batches(tmp_path):
    root = write_split(tmp_path, count=11)
    whole = make_dataset(root, batch_size=4, shuffle=True, seed=3)
    parts = [make_dataset(root, batch_size=4, shuffle=True, seed=3, devices=2, process=(p, 2))
             for p in range(2)]
    # 11 images in global batches of 4 on 2 devices: 4, 4 and 2 (the 11th in no batch)
    assert len(whole) == 3 and [len(part) for part in parts] == [3, 3]
    assert parts[0].left_out == 1 and whole.left_out == 0
    for index in range(3):
        images = np.concatenate([part[index][0] for part in parts])
        expected = whole[index][0]
        np.testing.assert_array_equal(images, expected[: len(expected) // 2 * 2])
    alone = make_dataset(root, batch_size=4, devices=4)  # one process, 4 devices: 4, 4
    assert len(alone) == 2 and alone.left_out == 3


def test_shuffle_order_follows_the_seed_and_the_epoch(tmp_path):
    root = write_split(tmp_path, count=8)

    def orders(seed):
        dataset = make_dataset(root, shuffle=True, seed=seed)
        first = dataset.order.tolist()
        dataset.on_epoch_end()
        return first, dataset.order.tolist()

    assert orders(7) == orders(7)
    assert orders(7) != orders(8)
    assert orders(7)[0] != orders(7)[1]
    assert sorted(orders(7)[0]) == list(range(8))


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_caches_give_the_same_batches_as_no_cache(tmp_path, cache):
    root = write_split(tmp_path, count=5)
    options = {"shuffle": True, "seed": 4, "augmenter": Augmenter(ALL_ON, seed=4)}
    plain = make_dataset(root, **options)
    cached = make_dataset(root, cache=cache, cache_dir=tmp_path / "cache", **options)
    for _ in range(2):
        for (a_images, a_labels), (b_images, b_labels) in zip(
            all_batches(plain), all_batches(cached), strict=True
        ):
            assert np.array_equal(a_images, b_images) and np.array_equal(a_labels, b_labels)
        plain.on_epoch_end()
        cached.on_epoch_end()
    if cache == "disk":
        reused = make_dataset(root, cache="disk", cache_dir=tmp_path / "cache")
        assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
        assert np.array_equal(reused[0][0], make_dataset(root)[0][0])



def test_a_file_copied_over_with_its_time_kept_is_decoded_anew(tmp_path):
    root = write_split(tmp_path, count=2)
    for png in (root / "images").iterdir():  # BMPs of one size are of one byte length
        Image.open(png).save(png.with_suffix(".bmp"))
        png.unlink()
    image = sorted((root / "images").iterdir())[0]
    first = make_dataset(root, cache="disk", cache_dir=tmp_path / "cache")[0][0]
    before = image.stat()
    Image.fromarray(np.full((24, 32), 7, np.uint8)).save(image)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` keeps it
    assert image.stat().st_size == before.st_size
    again = make_dataset(root, cache="disk", cache_dir=tmp_path / "cache")[0][0]
    assert np.array_equal(again, make_dataset(root)[0][0]) and not np.array_equal(again, first)


def test_a_bad_file_leaves_no_partial_disk_cache_and_is_kept_as_the_failure(tmp_path):
    root = write_split(tmp_path, count=3)
    broken = sorted((root / "images").iterdir())[-1]
    broken.write_bytes(b"not an image")
    with pytest.raises(UserError, match=broken.name):
        make_dataset(root, cache="disk", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    streaming = make_dataset(root, batch_size=3)
    with pytest.raises(UserError, match=broken.name) as info:
        streaming[0]
    assert streaming.failure is info.value


def test_off_color_pixels_are_warned_once_with_the_total(tmp_path):
    root = write_split(tmp_path, count=3)
    for index in range(2):
        path = root / "masks" / f"{index:03d}_1.png"
        mask = np.asarray(Image.open(path)).copy()
        mask[0, :5] = 128
        save(mask, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = make_dataset(root, batch_size=1)
        all_batches(dataset)
        all_batches(dataset)
    first, total = [str(w.message) for w in caught]  # the first mask's, at once; the total
    assert "000_1.png: 5 pixels" in first and "10 pixels in 2 masks" in total


def test_images_given_as_masks_are_warned_about_before_the_first_batch(tmp_path):
    root = write_split(tmp_path, count=3)
    pairs = [(mask, image) for image, mask in pair_files(root / "images", root / "masks")]
    with pytest.warns(UserWarning, match=r"000_1\.png: \d+ pixels are not exactly a class color"):
        SegmentationDataset(pairs, (24, 32), 3, BW, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_dataset(root)  # real masks: no warning


def test_dataset_from_config_augments_and_shuffles_only_for_training(tmp_path):
    write_split(tmp_path / "data" / "train", count=4)
    config = Config.model_validate(
        {
            "model": {"image_height": 32, "image_width": 32, "num_layers": 2},
            "data": {"dataset": str(tmp_path / "data")},
            "augment": {"enabled": True},
            "train": {"batch_size": 3, "output_dir": str(tmp_path / "run")},
        }
    )
    training = dataset_from_config(config, "train", training=True)
    assert training.shuffle and training.augmenter is not None and len(training) == 2
    evaluating = dataset_from_config(config, "train", training=False)
    assert not evaluating.shuffle and evaluating.augmenter is None
    assert evaluating[0][0].shape == (3, 32, 32, 3)


def test_the_loader_prefetches_in_keras_threads_under_tensorflow(tmp_path):
    # With one worker, Keras' TensorFlow trainer prefetches through tf.data, and dropping that
    # iterator at an epoch's end stalled the next epoch (27 s per epoch in BENCHMARKS.md).
    import keras

    write_split(tmp_path / "train", count=4)
    least = 2 if keras.backend.backend() == "tensorflow" else 1
    assert make_dataset(tmp_path / "train").workers == least
    assert make_dataset(tmp_path / "train", workers=3).workers == 3
    with pytest.raises(ValueError, match="workers"):
        Config.model_validate({"data": {"workers": 0}})


# ---- masks of another size, off-color counts ------------------------------------------------


def test_a_mask_of_another_size_than_its_image_is_refused(tmp_path):
    root = write_split(tmp_path, count=3)
    small = save(np.zeros((20, 30), np.uint8), root / "masks" / "002_1.png")
    expected = f"{small}: 30x20 pixels but its image {root / 'images' / '002_1.png'} has 32x24"
    streaming = make_dataset(root)  # the first pair, checked up front, is fine
    for read in (lambda: streaming[1], lambda: make_dataset(root, cache="memory")):
        with pytest.raises(UserError) as info:
            read()
        assert expected in str(info.value)
    save(np.zeros((20, 30), np.uint8), root / "masks" / "000_1.png")
    with pytest.raises(UserError, match=r"000_1\.png: 30x20 pixels but its image"):
        make_dataset(root)


def test_one_off_color_pixel_is_counted_in_the_singular(tmp_path):
    root = write_split(tmp_path, count=2)
    mask = np.asarray(Image.open(root / "masks" / "000_1.png")).copy()
    mask[0, 0] = 128
    save(mask, root / "masks" / "000_1.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        all_batches(make_dataset(root))
    first, total = [str(w.message) for w in caught]
    assert "000_1.png: 1 pixel is not exactly a class color" in first
    assert "1 pixel in 1 mask is not exactly a class color" in total


# ---- real CT slices --------------------------------------------------------------------------


def test_real_ct_slices_load_as_two_classes():
    folder = os.environ.get("FLEXUNET_REAL_CT")
    if not folder:
        pytest.skip("set FLEXUNET_REAL_CT to a folder with images/ and masks/ (real CT slices)")
    root = Path(folder)
    pairs = pair_files(root / "images", root / "masks")
    assert len(pairs) == 12
    dataset = SegmentationDataset(pairs, (512, 512), 3, BW, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every mask pixel is exactly black or white
        batches = all_batches(dataset)
    for images, labels in batches:
        assert images.shape[1:] == (512, 512, 3)
        assert set(np.unique(labels)) == {0, 1}
        assert all(labels[row].any() for row in range(len(labels)))
