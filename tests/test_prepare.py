"""`prepare`: synthetic phantoms, Decathlon volumes -> PNG slices split by patient, statistics."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import tarfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_one_line_error, flexunet
from PIL import Image
from typer.testing import CliRunner

from flexunet_k3.cli.app import app
from flexunet_k3.data.cases import SPLITS, case_of, read_splits, split_cases, warn_shared_cases
from flexunet_k3.data.msd import prepare_msd
from flexunet_k3.data.statistics import MINI_TEST, dataset_statistics, update_statistics
from flexunet_k3.data.synthetic import write_synthetic_dataset
from flexunet_k3.errors import UserError


def pngs(folder: Path) -> dict[str, bytes]:
    """Every slice PNG (split/kind/name.png) under folder, by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.glob("*/*/*.png")}


def write_task(folder: Path, volumes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """A Decathlon-style task folder from {case: (image, label, affine)}."""
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    training = []
    for case, (image, label, affine) in volumes.items():
        nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / f"lung_{case}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / "labelsTr" / f"lung_{case}.nii.gz")
        training.append(
            {"image": f"./imagesTr/lung_{case}.nii.gz", "label": f"./labelsTr/lung_{case}.nii.gz"}
        )
    (folder / "dataset.json").write_text(json.dumps({"training": training}))
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """12 synthetic cases, prepared at 512x512 (the acceptance run)."""
    root = tmp_path_factory.mktemp("acceptance")
    write_synthetic_dataset(root / "Task06_Lung", cases=12, seed=3, size=80, slices=20)
    stats = prepare_msd(root / "Task06_Lung", root / "Lung-Tumor", size=512, workers=2)
    return root / "Lung-Tumor", stats


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    """3 small synthetic cases (read only: copy before changing)."""
    folder = tmp_path_factory.mktemp("small") / "Task06_Lung"
    write_synthetic_dataset(folder, cases=3, seed=5, size=48, slices=12)
    return folder


def prepare_small(source: Path, output: Path, **options) -> dict:
    return prepare_msd(source, output, size=64, workers=1, **options)


def test_synthetic_layout_and_repeatable_bytes(tmp_path):
    ids = write_synthetic_dataset(tmp_path / "a", cases=2, seed=9, size=48, slices=8)
    write_synthetic_dataset(tmp_path / "b", cases=2, seed=9, size=48, slices=8)
    write_synthetic_dataset(tmp_path / "c", cases=2, seed=10, size=48, slices=8)
    meta = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert ids == ["001", "002"] and meta["numTraining"] == 2
    assert meta["labels"] == {"0": "background", "1": "cancer"}
    assert meta["training"][1] == {
        "image": "./imagesTr/lung_002.nii.gz",
        "label": "./labelsTr/lung_002.nii.gz",
    }
    image = nib.load(tmp_path / "a" / "imagesTr" / "lung_001.nii.gz")
    label = nib.load(tmp_path / "a" / "labelsTr" / "lung_001.nii.gz")
    assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S") and image.shape == (48, 48, 8)
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1}
    hu = np.asarray(image.dataobj)
    assert hu.min() < -900 and hu.max() > 500  # air and bone
    files = ["dataset.json", "imagesTr/lung_002.nii.gz", "labelsTr/lung_001.nii.gz"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / files[1]).read_bytes() != (tmp_path / "c" / files[1]).read_bytes()


def test_split_cases_by_patient():
    cases = [f"{i:03d}" for i in range(12)]
    split = split_cases(cases, (0.7, 0.15, 0.15), seed=1)
    assert [len(split[name]) for name in SPLITS] == [8, 2, 2]
    assert sorted(sum(split.values(), [])) == cases
    assert split == split_cases(list(reversed(cases)), (0.7, 0.15, 0.15), seed=1)
    assert [len(v) for v in split_cases(cases[:3], (0.7, 0.15, 0.15), seed=1).values()] == [1, 1, 1]


def test_cases_on_both_sides_of_a_split_are_named():
    test = [Path("test/images") / f"{name}.png" for name in ("7_1", "7_2", "8_1", "x", "c_1")]
    seen = [Path("train/images") / f"{name}.png" for name in ("7_9", "9_1", "x", "c_2", "d_3")]
    with pytest.warns(UserWarning) as caught:
        warn_shared_cases(test, seen, "train", "scores are not held out")
    assert [str(w.message) for w in caught] == [
        f"{Path('test/images')}: 3 cases (7, c, x) also in the train split (a case is the "
        "file-name part before the first underscore): scores are not held out; split by "
        "patient, as `flexunet prepare msd` does"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_shared_cases(test[1:], [Path("9_2.png")], "train", "")
        warn_shared_cases([], seen, "train", "")


def test_prepare_synthetic_at_512(prepared):
    out, stats = prepared
    cases = {s: {case_of(p) for p in (out / s / "images").glob("*.png")} for s in SPLITS}
    assert all(cases.values()), cases
    assert not (cases["train"] & cases["valid"] or cases["train"] & cases["test"])
    assert not cases["valid"] & cases["test"]
    for split in (*SPLITS, MINI_TEST):
        images = sorted(p.name for p in (out / split / "images").glob("*.png"))
        assert images == sorted(p.name for p in (out / split / "masks").glob("*.png"))
        for name in images:
            image = np.asarray(Image.open(out / split / "images" / name))
            mask = np.asarray(Image.open(out / split / "masks" / name))
            assert image.shape == mask.shape == (512, 512) and image.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}, name
    mini = {p.name for p in (out / MINI_TEST / "images").iterdir()}
    assert len(mini) == min(10, stats["images"]["test"])
    assert mini <= {p.name for p in (out / "test" / "images").iterdir()}
    written = json.loads((out / "statistics.json").read_text())
    on_disk = dataset_statistics(out)
    assert {key: written[key] for key in on_disk} == on_disk
    assert written["images"]["train"] == len(list((out / "train" / "images").iterdir()))
    assert written["settings"]["window"] == [-125.0, 225.0] and written["skipped_cases"] == {}
    assert 0 < on_disk["tumor_pixel_share"]["all"] < 0.05
    assert (out / "statistics.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".flexunet-")]
    record = read_splits(out)  # the split by patient, for whole-volume work on the test cases
    without = set(stats["cases_without_slices"])  # tumor-free patients: in a split, no slice
    assert {split: set(record["splits"][split]) - without for split in SPLITS} == cases
    assert without and without <= set().union(*record["splits"].values())
    assert record["window"] == (-125.0, 225.0) and Path(record["source"]).is_absolute()
    assert record["files"][sorted(cases["test"])[0]]["label"].startswith("labelsTr/lung_")



def test_a_split_record_that_is_no_file_is_named_as_such(tmp_path):
    with pytest.raises(UserError, match="not found; the dataset was not made"):
        read_splits(tmp_path)
    (tmp_path / "splits.json").mkdir()
    with pytest.raises(UserError, match="splits.json: is a folder; prepare the dataset again"):
        read_splits(tmp_path)


def marker_case(storage: str):
    """A 20x20x4 volume with a bright block in the patient's anterior-right, stored RAS or LPS."""
    image = np.full((20, 20, 4), -1000, np.int16)
    image[14:19, 13:18, 1:3] = 300  # voxel axes point to patient Right, Anterior, Superior
    label = (image > 0).astype(np.uint8)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    if storage == "LPS":  # the same physical placement, first two voxel axes reversed
        flip = np.array([[-1, 0, 0, 19], [0, -1, 0, 19], [0, 0, 1, 0], [0, 0, 0, 1]], float)
        image, label, affine = image[::-1, ::-1], label[::-1, ::-1], affine @ flip
    assert nib.aff2axcodes(affine) == tuple(storage)
    return {"001": (image, label, affine)}


def test_orientation_anterior_up_patient_right_on_image_left(tmp_path):
    slices = {}
    for storage in ("RAS", "LPS"):
        task = write_task(tmp_path / storage, marker_case(storage))
        prepare_msd(task, tmp_path / f"out-{storage}", size=32, workers=1)
        slices[storage] = tmp_path / f"out-{storage}" / "train" / "images" / "001_1.png"
        rows, cols = np.nonzero(np.asarray(Image.open(slices[storage])) > 128)
        assert len(rows) and rows.max() < 16 and cols.max() < 16, storage  # top-left quadrant
    assert slices["RAS"].read_bytes() == slices["LPS"].read_bytes()


def make_tar(task: Path, path: Path, size: int | None = None) -> Path:
    """task as Task06_Lung/ in a tar, with macOS `._` files; cut to `size` bytes if given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(task, arcname="Task06_Lung")
        for name in ("Task06_Lung/._dataset.json", "Task06_Lung/imagesTr/._lung_001.nii.gz"):
            junk = b"\x00\x05\x16\x07 AppleDouble"
            info = tarfile.TarInfo(name)
            info.size = len(junk)
            tar.addfile(info, io.BytesIO(junk))
    path.write_bytes(buffer.getvalue()[:size])
    return path


def test_tar_and_folder_give_identical_pngs(small_task, tmp_path):
    archive = make_tar(small_task, tmp_path / "Task06_Lung.tar")
    from_folder = prepare_small(small_task, tmp_path / "from-folder")
    from_tar = prepare_msd(archive, tmp_path / "from-tar", size=64, workers=2)
    assert pngs(tmp_path / "from-tar") == pngs(tmp_path / "from-folder")
    assert from_tar["images"] == from_folder["images"] and from_tar["images"]["train"] > 0
    gzipped = tmp_path / "Task06_Lung.tar.gz"
    gzipped.write_bytes(gzip.compress(archive.read_bytes()))
    with pytest.warns(UserWarning, match="Task06_Lung.tar.gz: a gzip-compressed archive is "
                      "unpacked from its start for every volume read"):
        prepare_small(gzipped, tmp_path / "from-tar-gz")
    assert pngs(tmp_path / "from-tar-gz") == pngs(tmp_path / "from-folder")


def test_truncated_tar_is_refused(small_task, tmp_path):
    whole = make_tar(small_task, tmp_path / "whole.tar")
    archive = make_tar(small_task, tmp_path / "cut.tar", size=whole.stat().st_size // 2)
    with pytest.raises(UserError, match=r"cut\.tar.*truncated"):
        prepare_small(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_volume_leaves_nothing_behind(small_task, tmp_path):
    task = shutil.copytree(small_task, tmp_path / "task")
    volume = task / "imagesTr" / "lung_002.nii.gz"
    volume.write_bytes(volume.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"lung_002\.nii\.gz.*corrupt"):
        prepare_small(task, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task"]


def test_shape_mismatch_skipped_with_warning_or_strict_error(small_task, tmp_path):
    task = shutil.copytree(small_task, tmp_path / "task")
    label = nib.load(task / "labelsTr" / "lung_002.nii.gz")
    smaller = np.asarray(label.dataobj)[:, :, :-2]
    nib.save(nib.Nifti1Image(smaller, label.affine), task / "labelsTr" / "lung_002.nii.gz")
    with pytest.warns(UserWarning, match="case 002"):
        stats = prepare_small(task, tmp_path / "out")
    assert list(stats["skipped_cases"]) == ["002"]
    assert not list((tmp_path / "out").rglob("002_*.png"))
    with pytest.raises(UserError, match="case 002"):
        prepare_small(task, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()



def test_a_patient_without_a_tumor_is_split_too(small_task, tmp_path):
    task = shutil.copytree(small_task, tmp_path / "task")
    path = task / "labelsTr" / "lung_002.nii.gz"
    label = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(label.shape, np.uint8), label.affine), path)
    stats = prepare_small(task, tmp_path / "out")
    assert stats["cases_without_slices"] == ["002"] and stats["skipped_cases"] == {}
    record = read_splits(tmp_path / "out")  # held out or not, whole-volume work finds it
    assert sorted(case for cases in record["splits"].values() for case in cases) == [
        "001", "002", "003"]
    assert record["files"]["002"]["label"] == "labelsTr/lung_002.nii.gz"
    assert not list((tmp_path / "out").rglob("002_*.png"))


def test_every_case_skipped_says_so_after_the_warnings(small_task, tmp_path):
    task = shutil.copytree(small_task, tmp_path / "task")
    for path in (task / "labelsTr").glob("*.nii.gz"):
        label = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:, :, :-2], label.affine), path)
    done = flexunet("prepare", "msd", "--source", str(task), "--output", str(tmp_path / "out"),
                    "--size", "32", "--workers", "1", "--keep-empty", "1")
    assert done.returncode == 2, done.stderr
    *warned, error = done.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in warned] == ["warning"] * 3
    assert error.startswith("error: every case was skipped (3 cases); the first: case 001: ")
    assert not (tmp_path / "out").exists()

def test_label_off_its_images_grid_skipped_with_warning(small_task, tmp_path):
    task = shutil.copytree(small_task, tmp_path / "task")
    path = task / "labelsTr" / "lung_002.nii.gz"
    label = nib.load(path)
    moved = label.affine.copy()
    moved[0, 3] += 50  # the same voxels, 50 mm to the side
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), moved), path)
    with pytest.warns(UserWarning, match=r"case 002: .*lung_002\.nii\.gz: its affine differs"):
        stats = prepare_small(task, tmp_path / "out")
    assert list(stats["skipped_cases"]) == ["002"]


def test_label_values_other_than_0_and_1_stop_the_run(small_task, tmp_path):
    task = shutil.copytree(small_task, tmp_path / "task")
    path = task / "labelsTr" / "lung_002.nii.gz"
    label = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj) * 3, label.affine), path)
    with pytest.raises(UserError, match=r"lung_002\.nii\.gz: the label \(0 background, 1 tumor\) "
                       r"holds values 0..3 but the classes are 0..1"):
        prepare_small(task, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_case_name_that_is_not_utf8(small_task, tmp_path):
    task = shutil.copytree(small_task, tmp_path / "task")
    name = os.fsdecode(b"lung_\xe4.nii.gz")  # no digits: the case id is the stem, lung-\xe4
    meta = json.loads((task / "dataset.json").read_text())
    for kind, key in (("imagesTr", "image"), ("labelsTr", "label")):
        (task / kind / "lung_002.nii.gz").rename(task / kind / name)
        meta["training"][1][key] = f"./{kind}/{name}"
    (task / "dataset.json").write_text(json.dumps(meta))
    prepare_small(task, tmp_path / "out")
    assert list((tmp_path / "out").rglob(os.fsdecode(b"lung-\xe4_*.png")))


def test_degenerate_affine_skipped_with_warning_or_strict_error(small_task, tmp_path):
    task = shutil.copytree(small_task, tmp_path / "task")
    path = task / "labelsTr" / "lung_002.nii.gz"
    label = nib.load(path)
    flat = nib.Nifti1Image(np.asarray(label.dataobj), label.affine)
    flat.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=2)  # no axial axis
    flat.set_qform(None, code=0)
    nib.save(flat, path)
    with pytest.warns(UserWarning, match=r"lung_002\.nii\.gz has a degenerate affine"):
        stats = prepare_small(task, tmp_path / "out")
    assert list(stats["skipped_cases"]) == ["002"]
    with pytest.raises(UserError, match=r"case 002: .*lung_002\.nii\.gz has a degenerate affine"):
        prepare_small(task, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


def test_source_not_a_tar_one_line(tmp_path):
    source = tmp_path / "Task06_Lung.tar"
    source.write_bytes(b"not a tar archive\n" * 100)
    with pytest.raises(UserError, match="not a readable tar archive") as error:
        prepare_small(source, tmp_path / "out")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("command", "output", "in_the_way"),
    [
        ("synthetic", "file/sub", "file"),
        ("synthetic", "out", "out/imagesTr"),
        ("msd", "file/sub", "file"),
        ("msd", "out", "out/valid"),
        ("msd", "out", "out/test/masks"),
    ],
)
def test_file_in_the_way_of_output_refused(small_task, tmp_path, command, output, in_the_way):
    (tmp_path / in_the_way).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / in_the_way).write_text("mine")
    before = sorted(tmp_path.rglob("*"))
    message = f"^{re.escape(str(tmp_path / in_the_way))}: is a file, not a folder"
    with pytest.raises(UserError, match=message):
        if command == "synthetic":
            write_synthetic_dataset(tmp_path / output, cases=1, size=32, slices=4)
        else:
            prepare_small(small_task, tmp_path / output, overwrite=True)
    assert sorted(tmp_path.rglob("*")) == before


def test_existing_dataset_refused_unless_overwrite(small_task, tmp_path):
    out = tmp_path / "out"
    prepare_small(small_task, out)
    first = pngs(out)
    (out / "notes.txt").write_text("mine")
    (out / "train" / "images" / "keep.txt").write_text("mine too")
    with pytest.raises(UserError, match="already holds a dataset.*--overwrite"):
        prepare_small(small_task, out)
    prepare_small(small_task, out, overwrite=True)
    assert pngs(out) == first
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "train" / "images" / "keep.txt").read_text() == "mine too"


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "not found"),
        ("empty", "empty folder"),
        ("no dataset.json", "no dataset.json"),
        ("no imagesTr", "imagesTr: missing"),
    ],
)
def test_bad_source_folders(tmp_path, layout, message):
    source = tmp_path / "source"
    if layout != "missing":
        source.mkdir()
    if layout == "no dataset.json":
        (source / "imagesTr").mkdir()
    if layout == "no imagesTr":
        (source / "dataset.json").write_text('{"training": []}')
    with pytest.raises(UserError, match=message):
        prepare_small(source, tmp_path / "out")


def test_bad_settings(small_task, tmp_path):
    with pytest.raises(UserError, match="window"):
        prepare_msd(small_task, tmp_path / "out", window=(200, -100))
    with pytest.raises(UserError, match="split"):
        prepare_msd(small_task, tmp_path / "out", split=(0.5, 0.2, 0.2))


def test_stats_refuses_statistics_json_that_is_not_an_object(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "statistics.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"statistics\.json: not flexunet's statistics \(Value"):
        update_statistics(tmp_path)


def test_stats_read_masks_as_training_does(tmp_path):
    """16-bit class ids, .npz, the classes of a config (red tumors); hidden files passed over."""
    train, valid = tmp_path / "train", tmp_path / "valid"
    for split in (train, valid):
        (split / "images").mkdir(parents=True)
    tumor = np.zeros((8, 8), np.uint8)
    tumor[:2, :2] = 1  # 4 of 64 pixels
    for name in ("a_1", "b_1"):
        Image.fromarray(tumor * 200).save(train / "images" / f"{name}.png")
        Image.fromarray(tumor * 200).save(valid / "images" / f"{name}.png")
    (train / "masks").mkdir()
    Image.fromarray(tumor.astype(np.uint16)).save(train / "masks" / "a_1.png")  # class ids
    np.savez(train / "masks" / "b_1.npz", labels=tumor)
    Image.fromarray(np.ones((8, 8), np.uint8) * 255).save(train / "masks" / ".old_a_1.png")
    (train / "masks" / "._b_1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (valid / "masks").mkdir()
    red = np.stack([tumor * 255, np.zeros_like(tumor), np.zeros_like(tumor)], axis=-1)
    for name in ("a_1", "b_1"):
        Image.fromarray(red).save(valid / "masks" / f"{name}.png")
    config = tmp_path / "red.yaml"
    config.write_text("data:\n  classes:\n    - {name: background, color: [0, 0, 0]}\n"
                      "    - {name: tumor, color: [255, 0, 0]}\n")
    result = CliRunner().invoke(app, ["-q", "prepare", "stats", str(tmp_path), "-c", str(config)])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "statistics.json").read_text())
    assert stats["masks"]["train"] == stats["images"]["train"] == stats["cases"]["train"] == 2
    assert stats["tumor_pixel_share"] == {"train": 0.0625, "valid": 0.0625, "test": 0.0,
                                          "all": 0.0625}
    assert stats["tumor_free_images"] == {"train": 0, "valid": 0, "test": 0}


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "Task06_Lung.tar"
    run = flexunet("prepare", "msd", "--source", str(missing), "--output", str(tmp_path / "out"))
    assert_one_line_error(
        run,
        f"error: {missing}: not found; give Task06_Lung.tar or its extracted folder "
        "(dataset.json, imagesTr, labelsTr)",
    )


def test_cli_synthetic_msd_and_stats(tmp_path):
    runner = CliRunner()
    source, out = tmp_path / "task", tmp_path / "out"
    steps = [
        ["prepare", "synthetic", "-o", source, "--cases", "3", "--size", "48", "--slices", "12"],
        ["-q", "prepare", "msd", "-s", source, "-o", out, "--size", "64", "--window", "-160,240"],
        ["-q", "prepare", "stats", out],
    ]
    for step in steps:
        result = runner.invoke(app, [str(arg) for arg in step])
        assert result.exit_code == 0, result.output
    assert "train" in result.output and "tumor pixels" in result.output
    assert json.loads((out / "statistics.json").read_text())["settings"]["window"] == [-160, 240]


def test_an_interrupted_synthetic_set_leaves_nothing(tmp_path, monkeypatch):
    from flexunet_k3.data import synthetic

    made = []

    def second_case_interrupted(*args):
        if made:
            raise KeyboardInterrupt
        made.append(synthetic_case(*args))
        return made[-1]

    synthetic_case = synthetic.phantom_case
    monkeypatch.setattr(synthetic, "phantom_case", second_case_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path / "set", cases=3, size=32, slices=4)
    assert made and list(tmp_path.iterdir()) == []
