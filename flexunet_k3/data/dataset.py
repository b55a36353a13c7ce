"""The streaming loader: image/mask pairs -> batches of (float32 images, int32 labels)."""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import keras
import numpy as np

from flexunet_k3.config import Config
from flexunet_k3.data.augment import Augmenter, random_crop
from flexunet_k3.data.images import pair_files, resize_image, resize_labels, to_float
from flexunet_k3.data.masks import read_pair, warn_off_color
from flexunet_k3.distribution import Placement
from flexunet_k3.errors import UserError, plural
from flexunet_k3.files import replacing, write_json
from flexunet_k3.progress import track

Size = tuple[int, int]
CROP_STREAM = 1  # seeds a sample's crop apart from its augmentation: [seed, epoch, sample, 1]


def load_pair(image_path: Path, mask_path: Path, size: Size, channels: int, colors):
    """`read_pair`, with image and labels resized to `size`."""
    image, labels, off_color = read_pair(image_path, mask_path, channels, colors)
    return resize_image(image, size), resize_labels(labels, size), off_color


class SegmentationDataset(keras.utils.PyDataset):
    """Batches of (images float32 (B, H, W, C), labels int32 (B, H, W)) from (image, mask) pairs.

    Shuffling and augmentation are seeded per epoch: the same seed gives the same batches.
    `crop = (size, foreground)` cuts each image to a training window after augmentation.
    `cache` keeps decoded arrays in memory or in a memmapped .npy under `cache_dir`, so files
    are decoded once; uncached, only the current batch (and worker prefetch) is in memory.

    For data parallelism, `batch_size` is the global batch, cut to whole shares of `devices`
    (a last batch too small for one image per device is left out), and this process gets
    its `process = (index, count)` part of each: the same global batches as one process.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        image_size: Size,
        channels: int,
        colors: Sequence[Sequence[int]],
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augmenter: Augmenter | None = None,
        crop: tuple[int, float] | None = None,
        cache: Literal["none", "memory", "disk"] = "none",
        cache_dir: Path | None = None,
        normalize: bool = True,
        workers: int = 1,
        devices: int = 1,
        process: tuple[int, int] = (0, 1),
    ):
        # With one worker, Keras' TensorFlow trainer prefetches through tf.data, and dropping
        # that iterator at an epoch's end stalled the next epoch's first step (27 s measured);
        # with two or more, Keras prefetches in its own thread pool. Other backends keep one
        # worker, which keeps pace with their steps (BENCHMARKS.md). A batch ahead per worker
        # keeps them busy; Keras' default of 10 costs memory.
        # Under tf.distribute, Keras' thread pool gave the batches out of order (measured: the
        # first step got the fifth batch), so several devices keep one worker.
        if keras.backend.backend() == "tensorflow" and devices == 1:
            workers = max(workers, 2)
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=workers)
        self.pairs = list(pairs)
        self.image_size = tuple(image_size)
        self.channels = channels
        self.colors = [tuple(color) for color in colors]
        self.batch_size = batch_size
        self.devices, self.process = devices, process
        self.shuffle, self.seed, self.augmenter = shuffle, seed, augmenter
        self.crop = crop
        self.normalize = normalize
        self._off_color = np.full(len(self.pairs), -1, np.int64)  # -1: not read yet
        self._warn_once = threading.Lock()  # acquired by the one warning, never released
        self._images = self._labels = None
        # The bad-input error of a batch read inside the backend's data pipeline, which may
        # wrap it (TensorFlow turns it into a long graph execution error); see `failure`.
        self.failure: UserError | None = None
        # Batches per epoch when fewer than all (train.steps_per_epoch): each epoch then takes
        # the first ones of its own shuffled order, rather than Keras running out of batches.
        self.max_batches: int | None = None
        if cache == "disk":
            if cache_dir is None:
                raise ValueError("cache='disk' needs a cache_dir")
            self._open_disk_cache(Path(cache_dir), workers)
        elif cache == "memory":
            self._images, self._labels = (np.empty(shape, np.uint8) for shape in self._shapes())
            self._fill_cache(workers)
        elif self.pairs:
            self._check_first_pair()
        self.set_epoch(0)

    def __len__(self) -> int:
        batches = len(self.pairs) // self.batch_size
        batches += len(self.pairs) % self.batch_size >= self.devices  # a last, shorter batch
        return batches if self.max_batches is None else min(batches, self.max_batches)

    def __getitem__(self, index: int):
        try:
            return self._batch(index)
        except UserError as exc:
            self.failure = exc
            raise

    def _batch(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        samples = self._share(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        if self._images is not None:
            images, labels = self._images[samples], self._labels[samples]
        else:
            images, labels = self._read_batch(samples)
        if self.augmenter is not None:
            for row, sample in enumerate(samples):
                rng = self.augmenter.rng(self.epoch, int(sample))
                images[row], labels[row] = self.augmenter(images[row], labels[row], rng)
        if self.crop is not None:
            images, labels = self._crop(images, labels, samples)
        return to_float(images, self.normalize), labels.astype(np.int32)

    def _crop(self, images: np.ndarray, labels: np.ndarray, samples: np.ndarray):
        """Each image's training window (its draws seeded like its augmentation)."""
        size, foreground = self.crop
        windows = [
            random_crop(image, label, size, foreground,
                        np.random.default_rng([self.seed, self.epoch, int(sample), CROP_STREAM]))
            for image, label, sample in zip(images, labels, samples, strict=True)
        ]
        return np.stack([w[0] for w in windows]), np.stack([w[1] for w in windows])

    def _share(self, samples: np.ndarray) -> np.ndarray:
        """This process's part of a global batch cut to whole shares of the devices."""
        index, count = self.process
        size = (len(samples) - len(samples) % self.devices) // count
        return samples[index * size : (index + 1) * size]

    @property
    def left_out(self) -> int:
        """Images in no batch: those of a last batch beyond whole shares of the devices."""
        return len(self.pairs) % self.batch_size % self.devices

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Use the order and augmentation of `epoch`.

        Keras's fit peeks at a batch and calls on_epoch_end once before the first epoch, so
        training should call this from a callback's on_epoch_begin (and fit with shuffle=False)
        for the same data on every backend, and when resuming at a later epoch.
        """
        self.epoch = epoch
        count = len(self.pairs)
        if self.shuffle:
            self.order = np.random.default_rng([self.seed, epoch]).permutation(count)
        else:
            self.order = np.arange(count)

    def _shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of the (images, labels) arrays that hold every pair."""
        height, width = self.image_size
        count = len(self.pairs)
        return (count, height, width, self.channels), (count, height, width)

    def _load(self, sample: int):
        image_path, mask_path = self.pairs[sample]
        return load_pair(image_path, mask_path, self.image_size, self.channels, self.colors)

    def _read_batch(self, samples: np.ndarray):
        height, width = self.image_size
        images = np.empty((len(samples), height, width, self.channels), np.uint8)
        labels = np.empty((len(samples), height, width), np.uint8)
        for row, sample in enumerate(samples):
            images[row], labels[row], self._off_color[sample] = self._load(int(sample))
        self._warn_off_color()
        return images, labels

    def _fill_cache(self, workers: int) -> None:
        with ThreadPoolExecutor(max(workers, 1)) as pool:
            loaded = pool.map(self._load, range(len(self.pairs)))
            for sample, item in enumerate(track(loaded, "caching images", total=len(self.pairs))):
                self._images[sample], self._labels[sample], self._off_color[sample] = item
        self._warn_off_color()

    def _cache_key(self) -> str:
        """A digest of the files (names, sizes, modification and change times: a copy that keeps
        the modification time, `cp -p` or `rsync -a`, still changes the change time), the target
        size and the classes."""
        stats = [(str(path), path.stat()) for pair in self.pairs for path in pair]
        files = [[name, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns] for name, stat in stats]
        text = json.dumps([files, self.image_size, self.channels, self.colors])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _open_disk_cache(self, cache_dir: Path, workers: int) -> None:
        """Reuse `<key>.json` + .npy files if complete and whole, else decode into new ones."""
        key = self._cache_key()
        done = cache_dir / f"{key}.json"
        names = cache_dir / f"{key}-images.npy", cache_dir / f"{key}-labels.npy"
        if done.is_file():
            try:
                self._images, self._labels = (np.load(name, mmap_mode="r") for name in names)
                self._off_color[:] = json.loads(done.read_text())["off_color"]
                whole = (self._images.shape, self._labels.shape) == self._shapes()
            except (OSError, ValueError, KeyError, TypeError):  # truncated, or not ours
                whole = False
            if whole:
                self._warn_off_color()
                return
            warnings.warn(f"{done.with_suffix('')}-*: the cached images are damaged; "
                          "decoding them again", stacklevel=3)
        # Filled under unique temporary names (two processes may fill one cache at once), so a
        # bad file or Ctrl-C leaves no partial cache files behind.
        with replacing(names[0]) as images, replacing(names[1]) as labels:
            self._images, self._labels = (
                np.lib.format.open_memmap(path, "w+", np.uint8, shape)
                for path, shape in zip((images, labels), self._shapes(), strict=True)
            )
            try:
                self._fill_cache(workers)
            except BaseException:
                self._images = self._labels = None
                raise
            self._images.flush()
            self._labels.flush()
        write_json(done, {"off_color": self._off_color.tolist()})

    def _check_first_pair(self) -> None:
        """Streaming warns of off-color masks only once all are read: read one pair up front, so
        that an image folder given as the masks' (or masks of another size) shows before
        training rather than after."""
        _, _, off_color = self._load(0)
        if off_color:
            verb = "is" if off_color == 1 else "are"
            warnings.warn(
                f"{self.pairs[0][1]}: {plural(off_color, 'pixel')} {verb} not exactly a class "
                "color; check data.classes and that this folder holds masks, not images (a total "
                "follows once every mask has been read)",
                stacklevel=3,
            )

    def _warn_off_color(self) -> None:
        """Warn once, when every mask has been read, if any pixel was not a class color."""
        if (self._off_color < 0).any() or not self._warn_once.acquire(blocking=False):
            return
        warn_off_color(self.pairs[0][1].parent, self._off_color, stacklevel=2)


def dataset_from_config(
    config: Config,
    split: Literal["train", "valid", "test"],
    *,
    training: bool,
    cache_dir: Path | None = None,
    placement: Placement | None = None,
) -> SegmentationDataset:
    """The loader for one split; shuffled and augmented only when `training`; with a
    data-parallel `placement`, in this process's shares of whole per-device batches."""
    placement = placement or Placement()
    augment = training and config.augment.enabled
    return SegmentationDataset(
        pair_files(*config.data.split_dirs(split)),
        (config.model.image_height, config.model.image_width),
        config.model.image_channels,
        [spec.color for spec in config.data.classes],
        config.train.batch_size,
        shuffle=training,
        seed=config.train.seed,
        augmenter=Augmenter(config.augment, config.train.seed) if augment else None,
        crop=(config.train.crop_size, config.train.crop_foreground)
        if training and config.train.crop_size else None,
        cache=config.data.cache,
        cache_dir=cache_dir or config.train.output_dir / "cache",
        normalize=not config.model.input_normalize,
        workers=config.data.workers,
        devices=placement.device_count,
        process=(placement.process_index, placement.process_count),
    )

