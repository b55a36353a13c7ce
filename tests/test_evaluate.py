"""`flexunet evaluate` of a trained model: its reports, Keras' own scores, bad input, portability
(mask files scored against numpy: test_evaluate_masks.py)."""

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import assert_one_line_error, flexunet, read_csv, write_config
from PIL import Image

from flexunet_k3.config import load_config
from flexunet_k3.data.dataset import dataset_from_config
from flexunet_k3.errors import UserError
from flexunet_k3.model_io import load_trained_model


def test_model_evaluation_reports_agree(trained_run, tmp_path):
    run = trained_run.parent / "run"
    done = flexunet("evaluate", "--config", str(trained_run))
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert table.index("tumor Dice, per case") < table.index("tumor Dice, per image")
    assert table.index("tumor Dice, per image") < table.index("dice_coef_multiclass")

    lines = (run / "evaluation.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "categorical_crossentropy", "dice_coef_multiclass"
    ]
    summary = json.loads((run / "evaluation.json").read_text())
    assert (summary["images"], summary["cases"]) == (8, 2)
    assert len(read_csv(run / "evaluation_per_image.csv")) == 8
    assert [row["case"] for row in read_csv(run / "evaluation_per_case.csv")] == ["301", "302"]

    # The numpy scores agree with Keras' own evaluation of the compiled metrics.
    config = load_config(trained_run)
    model = keras.saving.load_model(run / "models" / "best.keras")
    keras_scores = model.evaluate(
        dataset_from_config(config, "test", training=False), return_dict=True, verbose=0
    )
    assert summary["loss"]["value"] == pytest.approx(keras_scores["loss"], abs=1e-4)
    assert summary["dice_coef_multiclass"] == pytest.approx(
        keras_scores["dice_coef_multiclass"], abs=1e-4
    )

    # The same model's masks, written by infer and scored as files, give the same counts.
    test = config.data.dataset / "test"
    assert infer_and_score(trained_run, test, tmp_path) == per_image_counts(run)


def per_image_counts(folder: Path) -> list[list[str]]:
    keys = ("image", "true_pixels", "pred_pixels", "intersection")
    return [[row[key] for key in keys] for row in read_csv(folder / "evaluation_per_image.csv")]


def infer_and_score(config: Path, test: Path, tmp_path: Path) -> list[list[str]]:
    """Per-image counts of the model's masks of `test`, written by infer, scored as files."""
    masks, scores = tmp_path / "masks", tmp_path / "scores"
    assert flexunet("infer", "--config", str(config), "--images", str(test / "images"),
                    "--output", str(masks)).returncode == 0
    done = flexunet("evaluate", "--predictions", str(masks), "--masks", str(test / "masks"),
                    "--output", str(scores))
    assert done.returncode == 0, done.stderr
    return per_image_counts(scores)


def test_model_is_scored_at_each_masks_own_size(trained_run, tiny_dataset, tmp_path):
    """Test images larger than the model (two sizes) are scored at their own size: the counts
    are the mask files' and agree with infer's masks scored as files."""
    test = tmp_path / "test"
    sizes = {}
    for index, path in enumerate(sorted((tiny_dataset / "test" / "images").iterdir())):
        side = 96 if index < 5 else 80
        for kind, resample in (("images", Image.Resampling.BILINEAR),
                               ("masks", Image.Resampling.NEAREST)):
            (test / kind).mkdir(parents=True, exist_ok=True)
            source = Image.open(tiny_dataset / "test" / kind / path.name)
            source.resize((side, side), resample).save(test / kind / path.name)
        sizes[path.name] = side
    moved = ["--set", f"data.test_images={test / 'images'}",
             "--set", f"data.test_masks={test / 'masks'}"]
    done = flexunet("evaluate", "--config", str(trained_run), *moved,
                    "--output", str(tmp_path / "model"))
    assert done.returncode == 0, done.stderr
    rows = read_csv(tmp_path / "model" / "evaluation_per_image.csv")
    truth = {name: int((np.asarray(Image.open(test / "masks" / name)) == 255).sum())
             for name in sizes}
    assert {row["image"]: int(row["true_pixels"]) for row in rows} == truth
    assert max(truth.values()) > 32 * 32 // 4  # more than a 32x32 mask could hold
    assert infer_and_score(trained_run, test, tmp_path) == per_image_counts(tmp_path / "model")


def test_test_patients_seen_in_training_are_named(trained_run, tiny_dataset, tmp_path):
    valid = tiny_dataset / "valid"
    done = flexunet("evaluate", "--config", str(trained_run), "--output", str(tmp_path),
                    "--set", f"data.test_images={valid / 'images'}",
                    "--set", f"data.test_masks={valid / 'masks'}")
    assert done.returncode == 0, done.stderr
    assert (f"warning: {valid / 'images'}: 2 cases (201, 202) also in the train or valid split"
            in done.stderr)
    assert "the test scores are not held out" in done.stderr


def test_a_float32_model_predicts_under_the_configured_precision(trained_run):
    best = trained_run.parent / "run" / "models" / "best.keras"
    config = load_config(trained_run, ["train.precision=mixed_bfloat16", "train.jit=off"])
    model = load_trained_model(best, config)
    assert keras.mixed_precision.global_policy().name == "float32"  # the process's is left alone
    policies = {layer.dtype_policy.name for layer in model.layers if layer.weights}
    assert policies == {"mixed_bfloat16"}
    assert model.jit_compile is False
    images, _ = dataset_from_config(config, "test", training=False)[0]
    bf16 = np.asarray(model.predict_on_batch(images))
    assert bf16.dtype == np.float32  # the final softmax stays in float32
    as_saved = load_trained_model(best, load_config(trained_run))  # precision and jit: auto
    assert not isinstance(as_saved.jit_compile, str)  # a string would turn on torch.compile
    float32 = np.asarray(as_saved.predict_on_batch(images))
    assert np.abs(bf16 - float32).max() < 0.05


@pytest.mark.once  # refused whatever the backend: run in one session
def test_bad_inputs_exit_2_with_one_line(trained_run, tiny_dataset, tmp_path):
    assert_one_line_error(flexunet("evaluate", "--predictions", str(tmp_path)), "--masks")
    assert_one_line_error(
        flexunet("evaluate", "--predictions", str(tmp_path / "nowhere"), "--masks", str(tmp_path)),
        "folder not found",
    )
    larger = ["model.image_height=64", "model.image_width=64"]
    assert_one_line_error(
        flexunet("evaluate", "--config", str(trained_run), "--set", larger[0], "--set", larger[1]),
        "trained with model.image_height 32, model.image_width 32, not as the config says",
    )
    best = trained_run.parent / "run" / "models" / "best.keras"
    with pytest.raises(UserError, match="takes 32x32x1 images .* the config says 64x64x1"):
        load_trained_model(best, load_config(trained_run, larger))  # whatever config.yaml says
    damaged = write_config(tmp_path, tiny_dataset)
    (tmp_path / "run" / "models").mkdir(parents=True)
    whole = best.read_bytes()
    (tmp_path / "run" / "models" / "best.keras").write_bytes(whole[: len(whole) // 2])
    assert_one_line_error(
        flexunet("evaluate", "--config", str(damaged)),
        "cannot load this model (not a whole .keras zip archive: truncated",
    )
    with zipfile.ZipFile(tmp_path / "run" / "models" / "best.keras", "w") as archive:
        archive.writestr("notes.txt", "a zip, not a model")
    assert_one_line_error(flexunet("evaluate", "--config", str(damaged)), "cannot load this model")
    missing = write_config(tmp_path / "run", tiny_dataset)
    assert_one_line_error(flexunet("evaluate", "--config", str(missing)), "no trained model")


def numbers(tree, prefix=""):
    """{path: number} of every number in a JSON tree."""
    if not isinstance(tree, dict):
        return {prefix: tree} if isinstance(tree, int | float) else {}
    found = {}
    for key, value in tree.items():
        found.update(numbers(value, f"{prefix}/{key}"))
    return found


@pytest.mark.parity
def test_model_trained_on_jax_scores_the_same_on_every_backend(tmp_path, tiny_dataset):
    train = {"epochs": 6, "epoch_change_infer": False}
    config = write_config(tmp_path, tiny_dataset, train=train)
    done = flexunet("train", "--config", str(config), backend="jax")
    assert done.returncode == 0, done.stderr
    results = {}
    for backend in ("jax", "tensorflow", "torch"):
        output = tmp_path / backend
        done = flexunet("evaluate", "--config", str(config), "--output", str(output),
                        backend=backend)
        assert done.returncode == 0, done.stderr
        results[backend] = numbers(json.loads((output / "evaluation.json").read_text()))
    assert results["jax"]["/classes/tumor/per_image/counted"] > 0
    for backend in ("tensorflow", "torch"):
        assert results[backend].keys() == results["jax"].keys()
        for key, value in results["jax"].items():
            assert results[backend][key] == pytest.approx(value, abs=1e-4), (backend, key)
