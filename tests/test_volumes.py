"""Volume inference and whole-volume evaluation: NIfTI in, NIfTI out on the source's grid."""

import gzip
import json
import os
import tarfile
import warnings

import keras
import nibabel as nib
import numpy as np
import pytest
from conftest import assert_one_line_error, flexunet

from flexunet_k3.config import Config
from flexunet_k3.data.nifti import (
    Volume,
    from_display,
    read_volume,
    to_display,
    window_to_uint8,
)
from flexunet_k3.data.synthetic import write_synthetic_dataset
from flexunet_k3.errors import UserError
from flexunet_k3.inference import predict_probabilities
from flexunet_k3.volume_evaluation import (
    evaluate_held_out,
    evaluate_volume_files,
    write_volume_report,
)
from flexunet_k3.volume_inference import (
    VolumeInput,
    held_out_volumes,
    infer_volumes,
    segment_volume,
    volumes_at,
)
from flexunet_k3.volume_scores import score_volume

WINDOW = (-125.0, 225.0)
SPACING = (0.7, 0.7, 2.5)


def threshold_model(size: int) -> keras.Model:
    """A 'model' that segments the windowed image by brightness: tumor where it is bright."""
    inputs = keras.Input((size, size, 1))
    layer = keras.layers.Conv2D(2, 1, activation="softmax")
    outputs = layer(inputs)
    layer.set_weights([np.array([[[[-40.0, 40.0]]]], np.float32), np.array([20.0, -20.0])])
    return keras.Model(inputs, outputs)


def config(size: int, **infer) -> Config:
    return Config.model_validate({
        "model": {"image_height": size, "image_width": size, "image_channels": 1,
                  "num_layers": 2},
        "infer": {"batch_size": 3, **infer},
    })


def affine(kind: str) -> np.ndarray:
    """RAS, LPS, 30 degrees about z, or slices along the first voxel axis; anisotropic."""
    scale = np.diag([*SPACING, 1.0])
    if kind == "RAS":
        return scale
    if kind == "LPS":
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ scale
    if kind == "oblique":
        c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
        turn = np.array([[c, -s, 0, 5.0], [s, c, 0, -3.0], [0, 0, 1, 7.0], [0, 0, 0, 1]])
        return turn @ scale
    sagittal = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    return sagittal @ np.diag([2.5, 0.7, 0.7, 1.0])


def blobs(shape, seed: int) -> np.ndarray:
    """uint8 labels: a few large ellipsoids (tumors), in voxel coordinates."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    labels = np.zeros(shape, np.uint8)
    for _ in range(3):
        centre = [rng.uniform(0.3, 0.7) * n for n in shape]
        radii = [rng.uniform(0.15, 0.3) * n for n in shape]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
        labels[inside < 1] = 1
    return labels


def ct_of(labels: np.ndarray, affine_: np.ndarray) -> Volume:
    image = np.where(labels > 0, 200, -1000).astype(np.int16)
    return Volume(image, affine_, nib.Nifti1Image(image, affine_).header, "ct")


def display_shape(shape, kind):
    return to_display(np.zeros(shape), affine(kind)).shape


@pytest.mark.parametrize("kind", ["RAS", "LPS", "oblique", "sagittal"])
def test_ground_truth_round_trips_exactly_without_resize(tmp_path, kind):
    shape = (32, 32, 6) if kind != "sagittal" else (6, 32, 32)
    labels = blobs(shape, seed=1)
    source = ct_of(labels, affine(kind))
    source.header.set_qform(source.affine, code=1)
    source.header.set_sform(source.affine, code=2)
    [written] = infer_volumes(
        threshold_model(32), config(32), [VolumeInput("case", lambda: source)], tmp_path / "out",
        window=WINDOW, probabilities=True,
    ).written
    back = nib.load(tmp_path / "out" / written)
    assert back.shape == shape and back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-6)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 2
    np.testing.assert_allclose(back.header.get_zooms(), np.abs(SPACING if kind != "sagittal"
                                                                 else (2.5, 0.7, 0.7)), atol=1e-6)
    probabilities = nib.load(tmp_path / "out" / "case_probabilities.nii.gz")
    assert probabilities.shape == (*shape, 2)
    tumor = probabilities.get_fdata()[..., 1]
    assert 0 <= tumor.min() and tumor.max() <= 1 + 1e-6  # stored as uint8 x 1/255
    assert ((tumor > 0.5) == (labels > 0)).all()


def test_a_nifti2_source_or_unit_codes_nibabel_lacks_are_written_back(tmp_path):
    """A NIfTI-2 source with an axis longer than NIfTI-1 holds gives a NIfTI-2 label map; an
    xyzt_units code nibabel has no name for is copied as it is."""
    labels = np.zeros((40000, 2, 2), np.uint8)
    image = nib.Nifti2Image(np.full(labels.shape, -1000, np.int16), affine("RAS"))
    image.header["xyzt_units"] = 0x7F
    source = Volume(image.get_fdata(), image.affine, image.header, "long")
    [written] = infer_volumes(threshold_model(32), config(32), [VolumeInput("long", lambda:
                              source)], tmp_path, window=WINDOW).written
    back = nib.load(tmp_path / written)
    assert isinstance(back, nib.Nifti2Image) and back.shape == labels.shape
    assert int(back.header["xyzt_units"]) == 0x7F and not np.asanyarray(back.dataobj).any()


@pytest.mark.parametrize("kind", ["RAS", "LPS", "oblique"])
def test_ground_truth_round_trips_through_a_resize(kind):
    labels = blobs((96, 80, 5), seed=2)  # in-plane 96x80 -> the model's 64x64 -> back
    predicted, _ = segment_volume(threshold_model(64), ct_of(labels, affine(kind)), config(64),
                                  WINDOW)
    assert score_volume(labels, predicted, 1, SPACING)["dice"] >= 0.99


def test_display_view_and_back_are_inverse():
    volume = np.random.default_rng(0).integers(0, 9, (5, 6, 7, 2))
    for kind in ("RAS", "LPS", "oblique", "sagittal"):
        display = to_display(volume, affine(kind))
        np.testing.assert_array_equal(from_display(display, affine(kind)), volume)


def test_windowing_clips_before_the_cast():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a float64 beyond float32 overflowed in the cast
        grey = window_to_uint8(np.array([[1e300, -1e300, 50.0]]), WINDOW)
    np.testing.assert_array_equal(grey, [[255, 0, 128]])


def test_probabilities_are_resized_back_and_mirroring_averages_the_flip():
    images = np.random.default_rng(0).integers(0, 255, (5, 20, 28, 1), dtype=np.uint8)
    model = threshold_model(16)
    plain = predict_probabilities(model, images, config(16))
    assert plain.shape == (5, 20, 28, 2) and plain.dtype == np.float32
    np.testing.assert_allclose(plain.sum(-1), 1, atol=1e-5)
    mirrored = predict_probabilities(model, images, config(16, mirror=True))
    flipped = predict_probabilities(model, images[:, :, ::-1], config(16))
    np.testing.assert_allclose(mirrored, (plain + flipped[:, :, ::-1]) / 2, atol=1e-5)


def write_nifti(path, data, affine_=None):
    image = nib.Nifti1Image(data, np.diag([*SPACING, 1.0]) if affine_ is None else affine_)
    nib.save(image, path)
    return path


def test_score_files_against_labels_and_refuse_mismatches(tmp_path):
    truth = blobs((20, 20, 6), seed=3)
    predicted = np.roll(truth, 1, axis=0)
    (tmp_path / "pred").mkdir(), (tmp_path / "gt").mkdir()
    write_nifti(tmp_path / "pred" / "a.nii.gz", predicted)
    write_nifti(tmp_path / "gt" / "a.nii.gz", truth)
    report = evaluate_volume_files(tmp_path / "pred", tmp_path / "gt", ["bg", "tumor"], 1.0)
    [row] = report.rows
    expected = score_volume(truth, predicted, 1, SPACING)
    assert row["case"] == "a" and row["dice"] == expected["dice"]
    assert report.summary["classes"]["tumor"]["hd95"]["mean"] == pytest.approx(expected["hd95"])
    write_nifti(tmp_path / "gt" / "a.nii.gz", truth, np.diag([0.7, 0.7, 3.0, 1.0]))
    with pytest.raises(UserError, match="affine differs"):
        evaluate_volume_files(tmp_path / "pred", tmp_path / "gt", ["bg", "tumor"], 1.0)
    write_nifti(tmp_path / "gt" / "a.nii.gz", truth[:, :, :5])
    with pytest.raises(UserError, match=r"gt/a.nii.gz: shape \(20, 20, 5\) but .*pred/a.nii.gz "
                       r"has \(20, 20, 6\); predict on the labelled volume"):
        evaluate_volume_files(tmp_path / "pred", tmp_path / "gt", ["bg", "tumor"], 1.0)
    write_nifti(tmp_path / "gt" / "a.nii.gz", truth * 3)
    with pytest.raises(UserError, match="values 0..3 but the classes are 0..1"):
        evaluate_volume_files(tmp_path / "pred", tmp_path / "gt", ["bg", "tumor"], 1.0)


def test_volume_names_that_are_not_utf8_are_scored_and_written(tmp_path):
    name = os.fsdecode(b"ok\xe9.nii.gz")  # Latin-1 on disk: surrogates in Python
    truth = blobs((20, 20, 6), seed=3)
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        write_nifti(tmp_path / folder / name, truth)
    report = evaluate_volume_files(tmp_path / "pred", tmp_path / "gt", ["bg", "tumor"], 1.0)
    write_volume_report(report, tmp_path / "out")
    written = (tmp_path / "out" / "evaluation_volumes.csv").read_bytes()
    assert b"\nok\xe9,tumor,196,196,196,1.000000," in written


def test_held_out_patients_from_the_recorded_split(tmp_path):
    from flexunet_k3.data.msd import prepare_msd

    write_synthetic_dataset(tmp_path / "ct", cases=4, size=32, slices=4, seed=3)
    prepare_msd(tmp_path / "ct", tmp_path / "dataset", size=32, workers=1)
    cfg = config(32).model_copy(update={"data": Config().data.model_copy(
        update={"dataset": tmp_path / "dataset"})})
    inputs = held_out_volumes(cfg)
    test_cases = json.loads((tmp_path / "dataset" / "splits.json").read_text())["splits"]["test"]
    assert [item.name for item in inputs] == [f"lung_{case}" for case in test_cases]
    report = evaluate_held_out(threshold_model(32), cfg, inputs, WINDOW, 1.0)
    assert {row["case"] for row in report.rows} == {item.name for item in inputs}
    assert report.summary["volumes"] == len(inputs)
    label = tmp_path / "ct" / "labelsTr" / f"{inputs[0].name}.nii.gz"
    image = nib.load(tmp_path / "ct" / "imagesTr" / f"{inputs[0].name}.nii.gz")
    write_nifti(label, np.zeros(image.shape, np.uint8), image.affine @ np.diag([1, 1, 2, 1]))
    with pytest.raises(UserError, match="affine differs from .*; a label must lie on its image"):
        evaluate_held_out(None, cfg, inputs, WINDOW, 1.0)  # refused before any prediction
    write_nifti(label, np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(UserError, match="shape .* but .* has .*; a label must lie on its image"):
        evaluate_held_out(None, cfg, inputs, WINDOW, 1.0)


def test_volume_inputs_refuse_bad_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .nii or .nii.gz files"):
        volumes_at(tmp_path / "empty")
    bad = {
        "flat.nii.gz": np.zeros((8, 8), np.int16),
        "series.nii.gz": np.zeros((8, 8, 4, 2), np.int16),
        "complex.nii": np.zeros((8, 8, 4), np.complex64),
    }
    for name, data in bad.items():
        write_nifti(tmp_path / name, data)
    (tmp_path / "text.nii.gz").write_text("not a volume")
    (tmp_path / "raw.nii.gz").write_bytes(nib.Nifti1Image(np.zeros((4, 4, 2)), None).to_bytes())
    (tmp_path / "zipped.nii").write_bytes(gzip.compress((tmp_path / "raw.nii.gz").read_bytes()))
    for name, message in (("flat.nii.gz", "2D volume"), ("series.nii.gz", "4D volume"),
                          ("complex.nii", "type complex64"), ("text.nii.gz", "not a readable"),
                          ("raw.nii.gz", "not gzipped, unlike its name says; rename it raw.nii"),
                          ("zipped.nii", "gzipped, unlike its name says; rename it zipped.nii.gz")):
        with pytest.raises(UserError, match=message):
            read_volume(tmp_path / name)
    write_nifti(tmp_path / "one-frame.nii.gz", np.arange(64, dtype=np.int16).reshape(4, 4, 4, 1))
    assert read_volume(tmp_path / "one-frame.nii.gz").data.shape == (4, 4, 4)  # a 3D volume


def test_cli_infer_and_evaluate_volumes(trained_run, tmp_path):
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    labels = blobs((40, 36, 5), seed=4)
    write_nifti(volumes / "case_1.nii.gz", np.where(labels > 0, 200, -1000).astype(np.int16))
    output = tmp_path / "out"
    done = flexunet("infer", "--config", str(trained_run), "--volumes", str(volumes),
                    "--output", str(output), "--probabilities")
    assert done.returncode == 0, done.stderr
    written = nib.load(output / "case_1.nii.gz")
    assert written.shape == labels.shape and written.get_data_dtype() == np.uint8
    assert_one_line_error(  # a second run would replace the first's file
        flexunet("infer", "--config", str(trained_run), "--volumes", str(volumes),
                 "--output", str(output)), "already holds case_1.nii.gz", "--overwrite")
    gt = tmp_path / "gt"
    gt.mkdir()
    write_nifti(gt / "case_1.nii.gz", labels)
    done = flexunet("evaluate", "--volumes", str(output), "--labels", str(gt),
                    "--output", str(tmp_path / "scores"))  # case_1_probabilities passed over
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "scores" / "evaluation_volumes.json").read_text())
    assert summary["volumes"] == 1 and "hd95" in summary["classes"]["tumor"]
    done = flexunet("evaluate", "--volumes", str(output / "case_1.nii.gz"), "--labels",
                    str(gt / "case_1.nii.gz"))  # one file: the scores go beside it
    assert done.returncode == 0, done.stderr
    assert json.loads((output / "evaluation" / "evaluation_volumes.json").read_text()) == summary
    assert_one_line_error(
        flexunet("evaluate", "--config", str(trained_run), "--volumes"), "splits.json: not found")
    (volumes / "notes.nii.gz").write_text("not a volume")
    before = sorted(p.name for p in output.iterdir())
    done = flexunet("infer", "--config", str(trained_run), "--volumes", str(volumes),
                    "--output", str(output), "--overwrite")
    assert_one_line_error(done, "notes.nii.gz", "not a readable NIfTI")
    assert sorted(p.name for p in output.iterdir()) == before  # staged: nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_decathlon_task_gives_its_test_volumes(tmp_path):
    write_synthetic_dataset(tmp_path / "task", cases=2, size=32, slices=4, seed=5)
    with pytest.raises(UserError, match="imagesTs: no test volumes; .* --split test"):
        volumes_at(tmp_path / "task")
    (tmp_path / "task" / "imagesTs").mkdir()
    for name in ("lung_101.nii.gz", "lung_102.nii.gz"):
        write_nifti(tmp_path / "task" / "imagesTs" / name, np.zeros((8, 8, 3), np.int16))
    tests = tmp_path / "task" / "imagesTs"
    (tests / "old").mkdir()  # a subfolder is not read, nor archived
    write_nifti(tests / "old" / "lung_101.nii.gz", np.zeros((8, 8, 3)))
    (tests / "._lung_101.nii.gz").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # macOS's twin
    os.link(tests / "lung_101.nii.gz", tests / "lung_103.nii.gz")  # archived as a hard link
    nib.save(nib.Nifti2Image(np.ones((8, 8, 2), np.int16), np.eye(4)), tests / "lung_104.nii")
    names = ["lung_101", "lung_102", "lung_103", "lung_104"]
    assert [item.name for item in volumes_at(tmp_path / "task")] == names
    with tarfile.open(tmp_path / "task.tar", "w") as archive:
        archive.add(tmp_path / "task", arcname="Task06_Lung")
    inputs = volumes_at(tmp_path / "task.tar")
    assert [item.name for item in inputs] == names
    assert [item.read().data.shape for item in inputs] == [(8, 8, 3)] * 3 + [(8, 8, 2)]
