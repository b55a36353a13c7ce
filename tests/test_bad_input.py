"""Bad input, table-driven: each case exits 2 with one line naming the culprit, no traceback,
and leaves every file in its folder as it was (checksums before and after) with nothing added.

Cases run the command line in this process (`flexunet_k3.cli.app.run`, what the console script
calls), which is fast; those that could hang if the check failed (a pipe as input) run the
console script in a subprocess with a timeout, and so do those that could exhaust memory.
"""

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import BACKEND_NOISE, TINY
from PIL import Image

from flexunet_k3.cli.app import run

INI = """[model]
image_width = 32
image_height = 32
[train]
epochs = 2
"""


@dataclass
class Case:
    id: str
    args: list[str]  # "{t}" stands for the case's folder
    fragments: tuple[str, ...]
    setup: Callable[[Path], None] = lambda t: None
    code: int = 2
    subprocess: bool = False  # run the console script (a case that could hang or blow up)
    env: dict[str, str] | None = None  # environment variables for a subprocess case


# ---- builders -------------------------------------------------------------------------------


def text(name: str, content: str | bytes) -> Callable[[Path], None]:
    def write(t: Path) -> None:
        path = t / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return write


def config(**sections) -> Callable[[Path], None]:
    """config.yaml: the tiny test config with `sections` merged in (None removes a key)."""
    data = {key: dict(value) for key, value in TINY.items()}
    for section, values in sections.items():
        if not isinstance(values, dict):
            data[section] = values
            continue
        for key, value in values.items():
            data.setdefault(section, {})[key] = value
    return text("config.yaml", yaml.safe_dump(data))


def raw_config(body: str) -> Callable[[Path], None]:
    return text("config.yaml", body)


def both(*steps) -> Callable[[Path], None]:
    def run(t: Path) -> None:
        for step in steps:
            step(t)
    return run


def png(name: str, array: np.ndarray) -> Callable[[Path], None]:
    def write(t: Path) -> None:
        (t / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(t / name)
    return write


def pages(name: str, count: int) -> Callable[[Path], None]:
    """A multi-page TIFF of `count` copies of MASK."""
    def write(t: Path) -> None:
        (t / name).parent.mkdir(parents=True, exist_ok=True)
        frames = [Image.fromarray(MASK) for _ in range(count)]
        frames[0].save(t / name, save_all=True, append_images=frames[1:])
    return write


def npz(name: str, **arrays) -> Callable[[Path], None]:
    def write(t: Path) -> None:
        (t / name).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(t / name, **arrays)
    return write


def nifti(name: str, data: np.ndarray, affine=None) -> Callable[[Path], None]:
    def write(t: Path) -> None:
        (t / name).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1]) if affine is None
                                 else affine), t / name)
    return write


def nifti_with(data: np.ndarray, **fields) -> bytes:
    """Gzipped NIfTI bytes whose header fields are then overwritten as given (as no writer
    would: negative dims, pixdim 0, a shape the voxels do not fill)."""
    raw = nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1])).to_bytes()
    header = nib.Nifti1Header(raw[:348], check=False)
    for key, value in fields.items():
        header[key] = value
    return gzip.compress(header.binaryblock + raw[348:])


def link(name: str, target: str) -> Callable[[Path], None]:
    def write(t: Path) -> None:
        (t / name).parent.mkdir(parents=True, exist_ok=True)
        (t / name).symlink_to(target)
    return write


def folder(name: str) -> Callable[[Path], None]:
    return lambda t: (t / name).mkdir(parents=True, exist_ok=True)


def fifo(name: str) -> Callable[[Path], None]:
    return lambda t: os.mkfifo(t / name)


MASK = np.zeros((16, 16), np.uint8)
MASK[4:9, 4:9] = 255
VOLUME = np.zeros((12, 12, 4), np.uint8)
VOLUME[3:7, 3:7, 1:3] = 1
NAN_CT = np.zeros((12, 12, 4), np.float32)
NAN_CT[2, 3, 1] = np.nan
PAIR = both(png("pred/a.png", MASK), png("gt/a.png", MASK))
VOLUMES = both(nifti("pred/a.nii.gz", VOLUME), nifti("gt/a.nii.gz", VOLUME))


def task(dataset: dict | str, members: dict[str, bytes] | None = None) -> Callable[[Path], None]:
    """A Decathlon task folder `task/` with this dataset.json and files."""
    def write(t: Path) -> None:
        root = t / "task"
        root.mkdir()
        body = dataset if isinstance(dataset, str) else json.dumps(dataset)
        (root / "dataset.json").write_text(body)
        (root / "imagesTr").mkdir()
        for name, data in (members or {}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    return write


def nifti_bytes(data: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes())


def tar(name: str, members: dict[str, bytes], links: dict[str, str] | None = None):
    def write(t: Path) -> None:
        with tarfile.open(t / name, "w") as archive:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            for member, target in (links or {}).items():
                info = tarfile.TarInfo(member)
                info.type = tarfile.SYMTYPE
                info.linkname = target
                archive.addfile(info)
    return write


PAIRS = {"training": [
    {"image": "./imagesTr/lung_001.nii.gz", "label": "./labelsTr/lung_001.nii.gz"}]}
NESTED = "[" * 100000 + "]" * 100000
V = ["config", "validate", "{t}/config.yaml"]
S = ["config", "show", "{t}/config.yaml"]
EP = ["evaluate", "--predictions", "{t}/pred", "--masks", "{t}/gt"]
EV = ["evaluate", "--volumes", "{t}/pred", "--labels", "{t}/gt", "--output", "{t}/out"]
SYN = ["prepare", "synthetic", "--output", "{t}/out", "--size", "32", "--slices", "4"]
MSD = ["prepare", "msd", "--source", "{t}/task", "--output", "{t}/out", "--size", "32"]
IMP = ["config", "import", "{t}/a.config", "--output", "{t}/a.yaml"]
BENCH = ["benchmark", "--config", "{t}/config.yaml"]

CASES = [
    # config files
    Case("config-missing", V, ("config.yaml", "not found")),
    Case("config-is-folder", V, ("config.yaml",), folder("config.yaml")),
    Case("config-bad-yaml", V, ("not valid YAML",), raw_config("model: [1, 2\n")),
    Case("config-a-list", V, ("expected a mapping",), raw_config("- 1\n- 2\n")),
    Case("config-binary", V, ("config.yaml",), text("config.yaml", b"\xff\xfe\x00bad")),
    Case("config-python-tag", V, ("config.yaml",),
         raw_config("model: !!python/object:os.system {}\n")),
    Case("config-duplicate-key", V, ("duplicate key",), raw_config("train: {}\ntrain: {}\n")),
    Case("config-nested-yaml", V, ("config.yaml",), raw_config("a: " + "[" * 5000 + "]" * 5000)),
    Case("unknown-section", V, ("colour", "unknown key"), config(colour={"a": 1})),
    Case("unknown-key", V, ("model.size", "unknown key"), config(model={"size": 3})),
    Case("height-not-int", V, ("model.image_height",), config(model={"image_height": "abc"})),
    Case("height-not-divisible", V, ("image_height 30",), config(model={"image_height": 30})),
    Case("height-huge", V, ("model.image_height",), config(model={"image_height": 10**9})),
    Case("layers-huge", V, ("num_layers",), config(model={"num_layers": 100})),
    Case("filters-huge", V, ("model.base_filters",), config(model={"base_filters": 10**7})),
    Case("classes-huge", V, ("num_classes",), config(model={"num_classes": 100000})),
    Case("channels-two", V, ("model.image_channels",), config(model={"image_channels": 2})),
    Case("kernel-even", V, ("model.base_kernels",), config(model={"base_kernels": 4})),
    Case("dilation-zero", V, ("model.dilation",), config(model={"dilation": 0})),
    Case("dropout-one", V, ("model.dropout_rate",), config(model={"dropout_rate": 1.0})),
    Case("unknown-architecture", V, ("model.name",), config(model={"name": "resnet"})),
    Case("unknown-activation", V, ("model.activation",), config(model={"activation": "zap"})),
    Case("epochs-negative", V, ("train.epochs",), config(train={"epochs": -3})),
    Case("epochs-true", V, ("train.epochs",), config(train={"epochs": True})),
    Case("epochs-huge", V, ("train.epochs",), config(train={"epochs": 10**12})),
    Case("batch-zero", V, ("train.batch_size",), config(train={"batch_size": 0})),
    Case("batch-huge", V, ("train.batch_size",), config(train={"batch_size": 10**9})),
    Case("lr-nan", V, ("optimizer.learning_rate",),
         raw_config("optimizer: {learning_rate: .nan}\n")),
    Case("lr-inf", V, ("optimizer.learning_rate",),
         raw_config("optimizer: {learning_rate: .inf}\n")),
    Case("lr-negative", V, ("optimizer.learning_rate",), config(optimizer={"learning_rate": -1})),
    Case("clip-both", V, ("clipvalue or clipnorm",),
         config(optimizer={"clipvalue": 1.0, "clipnorm": 1.0})),
    Case("decay-on-adam", V, ("weight_decay",), config(optimizer={"weight_decay": 0.1})),
    Case("momentum-on-adam", V, ("momentum",), config(optimizer={"momentum": 0.9})),
    Case("optimizer-unknown", V, ("optimizer.name",), config(optimizer={"name": "lbfgs"})),
    Case("classes-mismatch", V, ("data.classes",),
         config(data={"classes": [{"name": "bg", "color": [0, 0, 0]}]})),
    Case("class-color-range", V, ("data.classes",),
         config(data={"classes": [{"name": "bg", "color": [0, 0, 0]},
                                  {"name": "t", "color": [300, 0, 0]}]})),
    Case("class-duplicate-color", V, ("data.classes",),
         config(data={"classes": [{"name": "bg", "color": [0, 0, 0]},
                                  {"name": "t", "color": [0, 0, 0]}]})),
    Case("class-duplicate-name", V, ("data.classes",),
         config(data={"classes": [{"name": "t", "color": [0, 0, 0]},
                                  {"name": "t", "color": [255, 255, 255]}]})),
    Case("workers-zero", V, ("data.workers",), config(data={"workers": 0})),
    Case("cache-unknown", V, ("data.cache",), config(data={"cache": "ssd"})),
    Case("precision-unknown", V, ("train.precision",), config(train={"precision": "int8"})),
    Case("jit-unknown", V, ("train.jit",), config(train={"jit": "maybe"})),
    Case("loss-unknown", V, ("train.loss",), config(train={"loss": "l2"})),
    Case("infer-batch-zero", V, ("infer.batch_size",), config(infer={"batch_size": 0})),
    Case("augment-probability", V, ("augment.probability",), config(augment={"probability": 2})),
    Case("augment-shrink", V, ("augment.shrink_ratios",), config(augment={"shrink_ratios": [0]})),
    Case("crop-not-a-multiple", V, ("config.yaml: train.crop_size: 10", "multiple of", "= 4"),
         config(train={"crop_size": 10})),
    Case("crop-over-the-image", V, ("config.yaml: train.crop_size: 64", "image size 32x32"),
         config(train={"crop_size": 64})),
    Case("set-crop", [*V, "--set", "train.crop_size=6"], ("error: --set train.crop_size: 6 must",),
         config()),
    Case("classes-and-num-classes", V, ("config.yaml: data.classes: 2 classes listed but",),
         config(model={"num_classes": 3})),
    Case("crop-foreground-share", V, ("train.crop_foreground",),
         config(train={"crop_foreground": 1.5})),
    Case("show-bad", S, ("train.epochs",), config(train={"epochs": 0})),
    # --set
    Case("set-no-equals", [*V, "--set", "train.epochs"], ("--set", "expected section.key=value"),
         config()),
    Case("set-empty-key", [*V, "--set", "=3"], ("--set", "empty part"), config()),
    Case("set-unknown-key", [*V, "--set", "train.epoch=3"], ("--set train.epoch",), config()),
    Case("set-octal", [*V, "--set", "model.image_height=010"],
         ("error: --set model.image_height: '010' is an octal or base-60 number",), config()),
    Case("set-bad-value", [*V, "--set", "model.image_height=abc"], ("--set model.image_height",),
         config()),
    Case("set-true-epochs", [*V, "--set", "train.epochs=true"], ("--set train.epochs",), config()),
    Case("set-not-a-section", [*V, "--set", "train.epochs.x=1"], ("--set", "epochs"), config()),
    Case("set-section-scalar", [*V, "--set", "model=3"], ("--set model",), config()),
    Case("set-nan", [*V, "--set", "optimizer.learning_rate=.nan"],
         ("--set optimizer.learning_rate",), config()),
    Case("set-path-null", [*V, "--set", "train.output_dir=~"],
         ("--set train.output_dir: expected a path, got null",), config()),
    Case("set-path-number", [*V, "--set", "data.dataset=5"],
         ("--set data.dataset: expected a path, got 5",), config()),
    Case("path-a-list", V, ("infer.images_dir: expected a path, got a list",),
         config(infer={"images_dir": ["a", "b"]})),
    # the original's INI config
    Case("ini-missing", IMP, ("a.config",)),
    Case("ini-folder", IMP, ("a.config",), folder("a.config")),
    Case("ini-root-folder", ["config", "import", "/"], ("/: is a folder",)),
    Case("ini-missing-output-exists", IMP, ("a.config: not found",), text("a.yaml", "mine: 1\n")),
    Case("ini-garbage", IMP, ("a.config",), text("a.config", "this is not an ini file\n")),
    Case("ini-bad-literal", IMP, ("a.config", "image_width"),
         text("a.config", "[model]\nimage_width = 5 +\n")),
    Case("ini-nested-literal", IMP, ("a.config",),
         text("a.config", "[model]\nbase_kernels = " + "(" * 5000 + ")" * 5000 + "\n")),
    Case("ini-output-is-input", ["config", "import", "{t}/a.config", "--output", "{t}/a.config",
                                 "--overwrite"], ("a.config",), text("a.config", INI)),
    Case("ini-output-exists", IMP, ("a.yaml", "--overwrite"),
         both(text("a.config", INI), text("a.yaml", "mine: 1\n"))),
    Case("ini-output-folder", IMP, ("a.yaml",), both(text("a.config", INI), folder("a.yaml"))),
    Case("ini-latin1", IMP, ("a.config", "not UTF-8", "save it as UTF-8"),
         text("a.config", INI.encode() + b"[data]\ntrain_datapath = './d\xe9j\xe0'\n")),
    Case("ini-augmentor-type", IMP, ("augmentor",),
         text("a.config", INI + "[augmentor]\nrotation = True\nangles = 5\n")),
    # evaluate --predictions: mask files
    Case("pred-missing", EP, ("pred", "folder not found"), folder("gt")),
    Case("gt-missing", EP, ("gt", "folder not found"), png("pred/a.png", MASK)),
    Case("pred-empty", EP, ("pred", "no image files"), both(folder("pred"), png("gt/a.png", MASK))),
    Case("pred-unpaired", EP, ("do not pair up",), both(PAIR, png("gt/b.png", MASK))),
    Case("pred-corrupt-png", EP, ("a.png", "cannot read"),
         both(text("pred/a.png", b"\x89PNG broken"), png("gt/a.png", MASK))),
    Case("pred-size-differs", EP, ("a.png",),
         both(png("pred/a.png", np.zeros((8, 8), np.uint8)), png("gt/a.png", MASK))),
    Case("pred-npz-corrupt", EP, ("a.npz",),
         both(text("pred/a.npz", b"PK\x03\x04 not a zip"), png("gt/a.png", MASK))),
    Case("pred-npz-two-arrays", EP, ("a.npz", "labels"),
         both(npz("pred/a.npz", x=np.zeros((16, 16), np.uint8), y=np.zeros((16, 16), np.uint8)),
              png("gt/a.png", MASK))),
    Case("pred-npz-3d", EP, ("a.npz",),
         both(npz("pred/a.npz", labels=np.zeros((2, 16, 16), np.uint8)), png("gt/a.png", MASK))),
    Case("pred-npz-not-classes", EP, ("a.npz",),
         both(npz("pred/a.npz", labels=np.full((16, 16), 7, np.uint8)), png("gt/a.png", MASK))),
    Case("pred-npz-float", EP, ("a.npz", "float32", "integer class ids"),
         both(npz("pred/a.npz", labels=np.zeros((16, 16), np.float32)), png("gt/a.png", MASK))),
    Case("pred-multipage-tiff", EP, ("a.tif", "holds 3 frames; give one image per file"),
         both(pages("pred/a.tif", 3), png("gt/a.png", MASK))),
    Case("pred-name-newline", EP, ("pred/a\\nb.png", "cannot read"),
         both(text("pred/a\nb.png", b"\x89PNG broken"), png("gt/a\nb.png", MASK))),
    Case("pred-without-masks", ["evaluate", "--predictions", "{t}/pred"], ("--masks",), PAIR),
    Case("pred-output-dangling-link", [*EP, "--output", "{t}/out"],
         ("out: is a symbolic link to nothing", "remove the link"),
         both(PAIR, link("out", "gone"))),
    Case("pred-report-exists", [*EP, "--output", "{t}/out"], ("evaluation", "--overwrite"),
         both(PAIR, text("out/evaluation.csv", "my notes\n"))),
    Case("pred-output-is-file", [*EP, "--output", "{t}/out"], ("out",),
         both(PAIR, text("out", "a file"))),
    Case("pred-mask-16bit-ids", EP, ("a.png",),
         both(png("pred/a.png", MASK), png("gt/a.png", (MASK > 0).astype(np.uint16) * 7))),
    # prepare synthetic
    Case("syn-cases-zero", [*SYN, "--cases", "0"], ("cases",)),
    Case("syn-cases-huge", [*SYN, "--cases", "99999999999999999999"], ("cases",), subprocess=True),
    Case("syn-cases-negative", [*SYN, "--cases", "-1"], ("cases",)),
    Case("syn-size-small", [*SYN, "--size", "8"], ("size",)),
    Case("syn-slices-zero", [*SYN, "--slices", "0"], ("slices",)),
    Case("syn-output-is-file", SYN, ("out",), text("out", "a file")),
    Case("syn-dataset-exists", SYN, ("dataset.json", "--overwrite"),
         text("out/dataset.json", "{}")),
    Case("syn-user-volumes", SYN, ("lung_001.nii.gz",), nifti("out/imagesTr/lung_001.nii.gz",
                                                              VOLUME)),
    # prepare msd
    Case("msd-source-missing", MSD, ("task", "not found")),
    Case("msd-source-empty", MSD, ("task", "empty folder"), folder("task")),
    Case("msd-no-dataset-json", MSD, ("no dataset.json",), text("task/readme.txt", "hi")),
    Case("msd-source-one-volume", [*MSD[:3], "{t}/lung_001.nii.gz", *MSD[4:]],
         ("lung_001.nii.gz: one volume, not a task; give Task06_Lung.tar",),
         nifti("lung_001.nii.gz", np.zeros((4, 4, 2), np.int16))),
    Case("msd-no-case-id", MSD, ("task/imagesTr/.nii.gz: a name with no case id",),
         task({"training": [{"image": "./imagesTr/.nii.gz", "label": "./labelsTr/a.nii.gz"}]},
              {"imagesTr/.nii.gz": b"x", "labelsTr/a.nii.gz": b"x"})),
    Case("msd-two-tasks", MSD, ("task: holds 2 tasks (A/, B/); give the folder or archive of one",),
         both(text("task/A/dataset.json", "{}"), text("task/B/dataset.json", "{}"))),
    Case("msd-json-invalid", MSD, ("dataset.json",), task("{not json")),
    Case("msd-json-nested", MSD, ("dataset.json",), task(NESTED)),
    Case("msd-json-not-object", MSD, ("dataset.json",), task("[1, 2]")),
    Case("msd-training-empty", MSD, ("training",), task({"training": []})),
    Case("msd-path-parent", MSD, ("..",), task({"training": [
        {"image": "../outside.nii.gz", "label": "./labelsTr/lung_001.nii.gz"}]})),
    Case("msd-path-absolute", MSD, ("/etc/passwd",), task({"training": [
        {"image": "/etc/passwd", "label": "./labelsTr/lung_001.nii.gz"}]})),
    Case("msd-listed-missing", MSD, ("lung_001.nii.gz", "missing"), task(PAIRS)),
    Case("msd-corrupt-volume", MSD, ("lung_001.nii.gz",), task(PAIRS, {
        "imagesTr/lung_001.nii.gz": b"\x1f\x8bnot gzip", "labelsTr/lung_001.nii.gz": b"x"})),
    Case("msd-2d-volume", [*MSD, "--strict"], ("lung_001.nii.gz",), task(PAIRS, {
        "imagesTr/lung_001.nii.gz": nifti_bytes(np.zeros((8, 8), np.int16)),
        "labelsTr/lung_001.nii.gz": nifti_bytes(np.zeros((8, 8), np.uint8))})),
    Case("msd-complex-volume", [*MSD, "--strict"], ("lung_001.nii.gz",), task(PAIRS, {
        "imagesTr/lung_001.nii.gz": nifti_bytes(np.zeros((8, 8, 2), np.complex64)),
        "labelsTr/lung_001.nii.gz": nifti_bytes(np.zeros((8, 8, 2), np.uint8))})),
    Case("msd-nan-volume", MSD, ("lung_001.nii.gz", "NaN or infinite values in 1 voxel"),
         task(PAIRS, {"imagesTr/lung_001.nii.gz": nifti_bytes(NAN_CT),
                      "labelsTr/lung_001.nii.gz": nifti_bytes(VOLUME)})),
    Case("msd-label-negative", MSD, ("lung_001.nii.gz", "negative values"), task(PAIRS, {
        "imagesTr/lung_001.nii.gz": nifti_bytes(np.zeros((12, 12, 4), np.int16)),
        "labelsTr/lung_001.nii.gz": nifti_bytes(VOLUME.astype(np.int16) - 1)})),
    Case("msd-header-bomb", MSD, ("lung_001.nii.gz", "promises 2147483648 bytes"), task(PAIRS, {
        "imagesTr/lung_001.nii.gz": nifti_with(np.zeros((2, 2, 2)), dim=[3, 512, 512, 1024, 1, 1,
                                                                          1, 1]),
        "labelsTr/lung_001.nii.gz": nifti_bytes(VOLUME)}), subprocess=True),
    Case("msd-window", [*MSD, "--window", "100,0"], ("window",), task(PAIRS)),
    Case("msd-split", [*MSD, "--split", "0.5,0.5,0.5"], ("split",), task(PAIRS)),
    Case("msd-size", [*MSD, "--size", "5"], ("size",), task(PAIRS)),
    Case("msd-keep-empty", [*MSD, "--keep-empty", "2"], ("keep-empty",), task(PAIRS)),
    Case("msd-workers", [*MSD, "--workers", "0"], ("workers",), task(PAIRS)),
    Case("msd-source-fifo", ["prepare", "msd", "--source", "{t}/pipe", "--output", "{t}/out"],
         ("pipe",), fifo("pipe"), subprocess=True),
    Case("msd-truncated-tar", ["prepare", "msd", "--source", "{t}/t.tar", "--output", "{t}/out"],
         ("t.tar",), text("t.tar", b"\x00" * 700)),
    Case("msd-tar-link", ["prepare", "msd", "--source", "{t}/t.tar", "--output", "{t}/out"],
         ("dataset.json",), tar("t.tar", {}, {"Task06_Lung/dataset.json": "/etc/passwd"})),
    Case("msd-output-holds-dataset", MSD, ("already holds a dataset",),
         both(task(PAIRS, {"imagesTr/lung_001.nii.gz": nifti_bytes(np.zeros((8, 8, 2), np.int16)),
                           "labelsTr/lung_001.nii.gz": nifti_bytes(VOLUME[:8, :8, :2])}),
              text("out/statistics.json", "{}"))),
    Case("stats-not-dataset", ["prepare", "stats", "{t}/out"], ("out",), folder("out")),
    Case("stats-set-without-config", ["prepare", "stats", "{t}/out", "--set", "x.y=1"],
         ("--set x.y=1: give --config",), folder("out")),
    Case("pred-set-without-config", [*EP, "--set", "data.classes=[]"],
         ("--set data.classes=[]: give --config",), PAIR),
    Case("vol-set-without-config", [*EV, "--set", "a.b=1"], ("--set a.b=1: give --config",),
         both(folder("pred"), folder("gt"))),
    Case("stats-json-not-object", ["prepare", "stats", "{t}/out"], ("statistics.json",),
         both(png("out/train/images/1_1.png", MASK), png("out/train/masks/1_1.png", MASK),
              text("out/statistics.json", "[1]"))),
    # whole volumes: evaluate --volumes PRED --labels GT
    Case("vol-pred-empty", EV, ("pred", "no .nii"), both(folder("pred"), folder("gt"))),
    Case("vol-labels-a-task", EV, ("gt: a Decathlon task folder; give a NIfTI file or a folder",
                                   "its labelsTr folder"),
         both(nifti("pred/a.nii.gz", VOLUME), text("gt/dataset.json", "{}"))),
    Case("vol-labels-a-tar", [*EV[:4], "{t}/gt.tar", *EV[5:]],
         ("gt.tar: not a .nii or .nii.gz file",),
         both(nifti("pred/a.nii.gz", VOLUME), tar("gt.tar", {"x": b""}))),
    Case("vol-pred-2d", EV, ("a.nii.gz", "2D"),
         both(nifti("pred/a.nii.gz", np.zeros((8, 8), np.uint8)), nifti("gt/a.nii.gz", VOLUME))),
    Case("vol-pred-4d", EV, ("a.nii.gz", "4D"),
         both(nifti("pred/a.nii.gz", np.zeros((8, 8, 2, 2), np.uint8)),
              nifti("gt/a.nii.gz", VOLUME))),
    Case("vol-pred-not-nifti", EV, ("a.nii.gz", "not a readable NIfTI"),
         both(text("pred/a.nii.gz", "hello"), nifti("gt/a.nii.gz", VOLUME))),
    Case("vol-pred-complex", EV, ("a.nii", "complex"),
         both(nifti("pred/a.nii", VOLUME.astype(np.complex64)), nifti("gt/a.nii", VOLUME))),
    Case("vol-shape", EV, ("a.nii.gz", "shape"),
         both(nifti("pred/a.nii.gz", VOLUME[:, :, :3]), nifti("gt/a.nii.gz", VOLUME))),
    Case("vol-affine", EV, ("a.nii.gz", "affine"),
         both(nifti("pred/a.nii.gz", VOLUME, np.eye(4)), nifti("gt/a.nii.gz", VOLUME))),
    Case("vol-label-not-classes", EV, ("a.nii.gz", "classes"),
         both(nifti("pred/a.nii.gz", VOLUME), nifti("gt/a.nii.gz", VOLUME * 5))),
    Case("vol-label-fractional", EV, ("a.nii.gz", "whole numbers"),
         both(nifti("pred/a.nii.gz", VOLUME), nifti("gt/a.nii.gz", VOLUME * 0.5))),
    Case("vol-label-negative", EV, ("a.nii.gz", "negative values"),
         both(nifti("pred/a.nii.gz", VOLUME), nifti("gt/a.nii.gz", VOLUME.astype(np.int8) - 1))),
    Case("vol-label-nan", EV, ("gt/a.nii.gz", "NaN or infinite values in 1 voxel (of 576)"),
         both(nifti("pred/a.nii.gz", VOLUME), nifti("gt/a.nii.gz", NAN_CT))),
    Case("vol-no-voxels", EV, ("a.nii.gz", "shape (12, 12, 0) holds no voxels"),
         both(nifti("pred/a.nii.gz", VOLUME[:, :, :0]), nifti("gt/a.nii.gz", VOLUME))),
    Case("vol-negative-dim", EV, ("a.nii.gz", "shape (-12, 12, 4) holds no voxels"),
         both(text("pred/a.nii.gz", nifti_with(VOLUME, dim=[3, -12, 12, 4, 1, 1, 1, 1])),
              nifti("gt/a.nii.gz", VOLUME))),
    Case("vol-pixdim-nan", EV, ("a.nii.gz", "pixdim) 0.7 x nan x 2.5 mm"),
         both(VOLUMES, text("gt/a.nii.gz", nifti_with(VOLUME, pixdim=[1, 0.7, np.nan, 2.5, 1, 1,
                                                                       1, 1])))),
    Case("vol-pixdim-zero", EV, ("a.nii.gz", "pixdim) 0 x 0 x 0 mm"),
         both(VOLUMES, text("gt/a.nii.gz", nifti_with(VOLUME, pixdim=[1, 0, 0, 0, 1, 1, 1, 1],
                                                       qform_code=0, sform_code=0)))),
    Case("vol-header-bomb", EV, ("a.nii.gz", "promises 2147483648 bytes", "(gzipped)"),
         both(text("pred/a.nii.gz", nifti_with(np.zeros((2, 2, 2)),
                                               dim=[3, 512, 512, 1024, 1, 1, 1, 1])),
              nifti("gt/a.nii.gz", VOLUME)), subprocess=True),
    Case("vol-header-only", EV, ("a.nii.gz", "not a readable NIfTI", "could the file be damaged"),
         both(text("pred/a.nii.gz", gzip.compress(nib.Nifti1Image(VOLUME, None).to_bytes()[:352])),
              nifti("gt/a.nii.gz", VOLUME))),
    Case("vol-truncated-gz", EV, ("a.nii.gz", "not a readable NIfTI"),
         both(text("pred/a.nii.gz", nifti_bytes(np.arange(576, dtype=np.int16).reshape(
             12, 12, 4))[:400]), nifti("gt/a.nii.gz", VOLUME))),
    Case("vol-truncated-nii", EV, ("a.nii", "promises", "truncated"),
         both(text("pred/a.nii", nib.Nifti1Image(VOLUME, None).to_bytes()[:400]),
              nifti("gt/a.nii", VOLUME))),
    Case("vol-garbage-bytes", EV, ("a.nii", "not a readable NIfTI"),
         both(text("pred/a.nii", bytes(range(256)) * 4), nifti("gt/a.nii", VOLUME))),
    Case("vol-gzip-not-nifti", EV, ("a.nii.gz", "not a readable NIfTI"),
         both(text("pred/a.nii.gz", gzip.compress(b"not a volume\n" * 100)),
              nifti("gt/a.nii.gz", VOLUME))),
    Case("vol-same-stem", EV, ("two volumes are named a",),
         both(VOLUMES, nifti("pred/a.nii", VOLUME))),
    Case("vol-link-loop", [*EV[:2], "{t}/pred/a.nii.gz", *EV[3:]],
         ("a.nii.gz", "symbolic link to nothing"),
         both(nifti("gt/a.nii.gz", VOLUME), link("pred/a.nii.gz", "a.nii.gz"))),
    Case("vol-held-out-window", ["evaluate", "--config", "{t}/config.yaml", "--volumes"],
         ("splits.json", "window [225, -125] is not LOW < HIGH"),
         both(config(), text("dataset/splits.json", json.dumps(
             {"source": "task", "window": [225, -125], "splits": {"test": []}, "files": {}})))),
    Case("vol-no-label", EV, ("no label for b",), both(VOLUMES, nifti("pred/b.nii.gz", VOLUME))),
    Case("vol-without-labels", ["evaluate", "--volumes", "{t}/pred"], ("--labels",), VOLUMES),
    Case("vol-report-exists", EV, ("evaluation_volumes", "--overwrite"),
         both(VOLUMES, text("out/evaluation_volumes.csv", "mine\n"))),
    Case("vol-pred-fifo", EV, ("pred",), both(folder("gt"), fifo("pred")), subprocess=True),
    Case("vol-tolerance", [*EV, "--tolerance-mm", "-1"], ("tolerance",), VOLUMES),
    Case("vol-alone-no-config", ["evaluate", "--volumes"], ("--config",)),
    # benchmark options
    Case("bench-backend", [*BENCH, "--backends", "mxnet"], ("mxnet",), config()),
    Case("bench-precision", [*BENCH, "--precision", "fp8"], ("fp8",), config()),
    Case("bench-precision-empty", [*BENCH, "--precision", ""], ("--precision: no values",),
         config()),
    Case("bench-jit-empty", [*BENCH, "--jit", ""], ("--jit: no values",), config()),
    Case("bench-steps", [*BENCH, "--steps", "0"], ("steps",), config()),
    Case("bench-timeout", [*BENCH, "--timeout", "0"], ("timeout",), config()),
    Case("bench-devices-zero", [*BENCH, "--devices", "1,0"], ("--devices: '0'",), config()),
    Case("bench-devices-word", [*BENCH, "--devices", "two"], ("--devices: 'two'",), config()),
    Case("bench-devices-batch", [*BENCH, "--devices", "4096", "--batch-size", "2"],
         ("batch over 4096",), config()),
    Case("bench-devices-superscript", [*BENCH, "--devices", "\u00b2"], ("--devices: '\u00b2'",),
         config()),
    Case("bench-json-under-file", [*BENCH, "--json", "{t}/config.yaml/rows.json"],
         ("config.yaml: is a file",), config()),
    Case("bench-json-folder", [*BENCH, "--json", "{t}/rows"], ("rows: is a folder",),
         both(config(), folder("rows"))),
    Case("bench-json-exists", [*BENCH, "--json", "{t}/rows.json"],
         ("rows.json: already exists; pass --overwrite",), both(config(), text("rows.json", "[]"))),
    Case("bench-json-is-config", [*BENCH, "--json", "{t}/config.yaml", "--overwrite"],
         ("config.yaml: is the config to run; give another --json",), config()),
    # environment
    Case("env-cpu-devices-superscript", ["info"], ("FLEXUNET_CPU_DEVICES is '\u00b2'",),
         subprocess=True, env={"FLEXUNET_CPU_DEVICES": "\u00b2"}),
    # usage
    Case("unknown-command", ["fly"], ("fly",)),
    Case("unknown-option", ["config", "validate", "--colour"], ("--colour",)),
    Case("option-without-value", ["config", "validate", "{t}/config.yaml", "--set"],
         ("Option '--set' requires an argument",), config()),
    Case("infer-images-and-volumes", ["infer", "--config", "{t}/config.yaml", "--images", "{t}",
                                      "--volumes", "{t}"], ("--images and --volumes",), config()),
    Case("infer-images-and-split", ["infer", "--config", "{t}/config.yaml", "--images", "{t}",
                                    "--split", "test"], ("--images and --split",), config()),
    Case("infer-bad-split", ["infer", "--config", "{t}/config.yaml", "--split", "train"],
         ("--split train",), config()),
    Case("train-config-missing", ["train", "--config", "{t}/none.yaml"], ("none.yaml",)),
    Case("train-set-bad", ["train", "--config", "{t}/config.yaml", "--set", "train.epochs=0"],
         ("--set train.epochs",), config()),
]


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root; special files and folders by kind."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            found[key] = "special"
        elif path.is_dir():
            found[key] = "folder"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_case(case: Case, tmp_path: Path, capsys) -> tuple[int, str]:
    """(exit code, stderr) of the case's command line, its folder checked unchanged."""
    case.setup(tmp_path)
    before = checksums(tmp_path)
    args = [arg.replace("{t}", str(tmp_path)) for arg in case.args]
    if case.subprocess:
        done = subprocess.run(["flexunet", *args], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, env={**os.environ, **(case.env or {})})
        code, stderr = done.returncode, done.stderr + done.stdout
    else:
        code = run(args)
        stderr = capsys.readouterr().err
    assert checksums(tmp_path) == before, "files changed, were lost or were left behind"
    return code, stderr


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path, capsys):
    code, stderr = run_case(case, tmp_path, capsys)
    lines = [line for line in stderr.strip().splitlines() if not BACKEND_NOISE.match(line)]
    assert code == case.code, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in case.fragments:
        assert fragment in lines[0], lines[0]


def test_msd_member_larger_than_a_volume(tmp_path, capsys, monkeypatch):
    """A tar member larger than any volume may be is refused before it is read (the limit is
    lowered here: a member beyond the real one takes 8 GiB)."""
    monkeypatch.setattr("flexunet_k3.data.msd.MAX_FILE_BYTES", 4000)
    volume = nib.Nifti1Image(np.zeros((32, 32, 4), np.int16), np.eye(4)).to_bytes()
    members = {"Task06_Lung/dataset.json": json.dumps(PAIRS).encode(),
               "Task06_Lung/imagesTr/lung_001.nii.gz": volume,
               "Task06_Lung/labelsTr/lung_001.nii.gz": volume}
    test_bad_input(Case("msd-tar-member-too-big", [*MSD[:3], "{t}/t.tar", *MSD[4:]],
                        ("lung_001.nii.gz", f"{len(volume)} bytes, more than the 4000",
                         "NIfTI volumes of at most"), tar("t.tar", members)), tmp_path, capsys)



def test_an_empty_environment_setting_counts_as_unset(monkeypatch):
    from flexunet_k3.distribution import cpu_device_count

    monkeypatch.setenv("FLEXUNET_CPU_DEVICES", "")
    assert cpu_device_count() is None
    monkeypatch.setenv("FLEXUNET_CPU_DEVICES", "2")
    assert cpu_device_count() == 2

def test_ids_are_unique_and_there_are_a_hundred():
    assert len({case.id for case in CASES}) == len(CASES) >= 100


def test_ctrl_c_during_prepare_synthetic_leaves_nothing(tmp_path):
    args = [arg.replace("{t}", str(tmp_path)) for arg in SYN]
    process = subprocess.Popen(["flexunet", *args, "--cases", "2000"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(tmp_path.iterdir()) and time.monotonic() < deadline:  # its staging folder
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.rstrip().endswith("interrupted") and "Traceback" not in stderr
    assert checksums(tmp_path) == {}  # the staging folder is gone, no output folder made
