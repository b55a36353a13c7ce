"""`flexunet train`: the run folder, seeds, refusal and --overwrite, --resume, NaN (Ctrl-C and
kills: test_train_interrupted.py)."""

import json
import math
import shutil
from pathlib import Path

import keras
import pytest
from conftest import TINY, assert_one_line_error, flexunet, write_config

from flexunet_k3.callbacks import RunRecorder
from flexunet_k3.config import load_config
from flexunet_k3.data.dataset import dataset_from_config
from flexunet_k3.errors import UserError
from flexunet_k3.model_io import load_trained_model
from flexunet_k3.run_folder import RunFolder, TrainState
from flexunet_k3.training import train


def read_state(run: Path) -> dict:
    return json.loads((run / "history.json").read_text())


def test_run_folder_is_complete_seeded_and_guarded(tmp_path, tiny_dataset):
    config = write_config(tmp_path, tiny_dataset)
    first = train(load_config(config)).state
    run = tmp_path / "run"
    for name in (
        "config.yaml", "history.json", "models/best.keras", "models/last.keras",
        "eval/train_losses.csv", "eval/train_losses.png",
        "eval/train_metrics.csv", "eval/train_metrics.png",
        "eval/train_foreground.csv", "eval/train_foreground.png",
        "epoch_change_infer/mosaic/Epoch_1.png", "epoch_change_infer/mosaic/Epoch_2.png",
    ):
        assert (run / name).is_file(), name
    epoch_masks = sorted(path.name for path in (run / "epoch_change_infer").glob("Epoch_2_*"))
    assert epoch_masks == ["Epoch_2_301_0.png", "Epoch_2_301_1.png", "Epoch_2_301_2.png"]

    losses = (run / "eval" / "train_losses.csv").read_text().splitlines()
    assert losses[0] == "epoch,loss,val_loss" and len(losses) == 3
    row = [float(value) for value in losses[1].split(",")]
    assert row == pytest.approx([1, first.history["loss"][0], first.history["val_loss"][0]])
    metrics = (run / "eval" / "train_metrics.csv").read_text().splitlines()
    assert metrics[0] == "epoch,dice_coef_multiclass,val_dice_coef_multiclass"
    foreground = (run / "eval" / "train_foreground.csv").read_text().splitlines()
    assert foreground[0] == "epoch,dice_tumor,val_dice_tumor" and len(foreground) == 3
    assert float(foreground[2].split(",")[2]) == pytest.approx(first.history["val_dice_tumor"][1])
    state = read_state(run)
    assert state["status"] == "completed" and state["epoch"] == 2
    best_is_last = state["best_epoch"] == 2
    assert ((run / "models/best.keras").read_bytes() == (run / "models/last.keras").read_bytes()) \
        == best_is_last
    assert state["history"]["learning_rate"][0] == pytest.approx(0.01)
    assert len(state["history"]["images_per_s"]) == 2 and min(state["history"]["images_per_s"]) > 0

    (run / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="finished run .* pass --resume .* or --overwrite"):
        train(load_config(config))
    second = train(load_config(config), overwrite=True).state
    assert second.history["loss"] == first.history["loss"]  # same seed, same backend
    assert (run / "notes.txt").read_text() == "mine"


def test_steps_per_epoch_below_the_data_runs_every_epoch(tmp_path, tiny_dataset, recwarn):
    # 6 batches of training data, 4 per epoch: Keras alone runs out of data in epoch 2 and
    # cuts the run short with a warning.
    train_section = {"epochs": 3, "steps_per_epoch": 4, "epoch_change_infer": False}
    state = train(load_config(write_config(tmp_path, tiny_dataset, train=train_section))).state
    assert state.status == "completed" and len(state.history["loss"]) == 3
    assert not [w for w in recwarn if "ran out of data" in str(w.message)]


def test_a_bad_image_read_during_training_is_one_user_error(tmp_path, tiny_dataset):
    dataset = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, dataset)
    broken = sorted((dataset / "train" / "images").iterdir())[-1]
    broken.write_bytes(b"not an image")
    config = write_config(tmp_path, dataset, train={"epochs": 1, "epoch_change_infer": False})
    with pytest.raises(UserError, match=f"{broken}: cannot read image"):
        train(load_config(config))  # under TensorFlow, raised inside tf.data and wrapped


def test_epoch_change_images_whose_masks_would_share_a_name_are_refused(tmp_path, tiny_dataset):
    images = tmp_path / "scans"
    images.mkdir()
    first = sorted((tiny_dataset / "test" / "images").iterdir())[0]
    shutil.copy(first, images / "a.png")
    shutil.copy(first, images / "a.tif")
    config = write_config(tmp_path, tiny_dataset, train={"epochs": 1},
                          infer={"images_dir": str(images)})
    with pytest.raises(UserError, match=r"a.png and a.tif would both be written as a.png; .* "
                       r"\(for epoch-change inference"):
        train(load_config(config))
    assert not (tmp_path / "run").exists()


def test_mixed_precision_policy_is_honoured(tmp_path, tiny_dataset):
    train_section = {"epochs": 1, "precision": "mixed_bfloat16", "epoch_change_infer": False}
    config = write_config(tmp_path, tiny_dataset, train=train_section)
    try:
        model = train(load_config(config)).model
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    assert read_state(tmp_path / "run")["status"] == "completed"


def test_training_on_crops_gives_a_model_for_whole_images(tmp_path, tiny_dataset):
    config = load_config(write_config(
        tmp_path, tiny_dataset,
        train={"epochs": 1, "steps_per_epoch": 2, "crop_size": 16, "num_infer_images": 1},
    ))
    images, labels = dataset_from_config(config, "train", training=True)[0]
    assert images.shape == (4, 16, 16, 1) and labels.shape == (4, 16, 16)
    assert dataset_from_config(config, "valid", training=False)[0][0].shape == (4, 32, 32, 1)
    assert train(config).state.status == "completed"
    model = load_trained_model(tmp_path / "run" / "models" / "best.keras", config)
    assert tuple(model.inputs[0].shape) == (None, None, None, 1)
    assert keras.ops.shape(model.predict(images, verbose=0)) == (4, 16, 16, 2)
    whole = dataset_from_config(config, "test", training=False)[0][0]
    assert keras.ops.shape(model.predict(whole, verbose=0)) == (4, 32, 32, 2)
    config.model.image_channels = 3
    with pytest.raises(UserError, match="takes 1-channel images of any size and 2 output"):
        load_trained_model(tmp_path / "run" / "models" / "best.keras", config)


def test_resume_refuses_crops_or_a_precision_the_run_was_not_trained_with(tmp_path,
                                                                         tiny_dataset):
    train_section = {"epochs": 1, "steps_per_epoch": 1, "epoch_change_infer": False}
    train(load_config(write_config(tmp_path, tiny_dataset, train=train_section)))
    config = load_config(write_config(
        tmp_path, tiny_dataset, train={**train_section, "epochs": 2, "crop_size": 16}
    ))
    with pytest.raises(UserError, match="trained on whole images.* train.crop_size; set it back"):
        train(config, resume=True)
    config = load_config(write_config(  # ignored before: the run went on in float32
        tmp_path, tiny_dataset, train={**train_section, "epochs": 2,
                                       "precision": "mixed_bfloat16"}
    ))
    with pytest.raises(UserError, match=r"train.precision: mixed_bfloat16 \(mixed_bfloat16\) "
                       r"but .*last.keras trained in float32; --resume goes on"):
        train(config, resume=True)


def test_one_sigmoid_class_trains_with_every_loss(tmp_path, tiny_dataset):
    # Keras squeezes a single output channel away before calling losses and metrics
    for loss in ("categorical_crossentropy", "dice", "ce_dice"):
        (tmp_path / loss).mkdir()
        config = write_config(
            tmp_path / loss, tiny_dataset, model={**TINY["model"], "num_classes": 1},
            train={"epochs": 1, "steps_per_epoch": 2, "loss": loss, "num_infer_images": 1},
        )
        state = train(load_config(config)).state
        assert state.status == "completed", loss
        assert all(math.isfinite(state.history[key][0]) for key in ("loss", "val_loss"))
        assert "val_dice_tumor" in state.history


def test_resume_takes_a_changed_learning_rate_and_keeps_a_reached_one(tmp_path, tiny_dataset):
    def run_to(epochs: int, learning_rate: float, schedule: str = "constant") -> list[float]:
        config = write_config(
            tmp_path, tiny_dataset, optimizer={"learning_rate": learning_rate},
            train={"epochs": epochs, "epoch_change_infer": False, "reducer": {"enabled": False},
                   "lr_schedule": schedule},
        )
        return train(load_config(config), resume=epochs > 1).state.history["learning_rate"]

    assert run_to(1, 0.01) == [pytest.approx(0.01)]
    last = tmp_path / "run" / "models" / "last.keras"
    reduced = keras.saving.load_model(last)  # as if the plateau reducer had halved the rate
    reduced.optimizer.learning_rate = 0.005
    reduced.save(last)
    assert run_to(2, 0.01)[1] == pytest.approx(0.005)
    with pytest.warns(UserWarning, match="changed from 0.01 to 0.002: resuming at 0.002 instead "
                      "of the 0.005"):
        assert run_to(3, 0.002)[2] == pytest.approx(0.002)
    # a cosine sets each epoch's rate from the config's, over the epochs now asked (4, 5 of 5)
    cosine = [0.01 * (1 + math.cos(math.pi * epoch / 5)) / 2 for epoch in (3, 4)]
    assert run_to(5, 0.01, "cosine")[3:] == pytest.approx(cosine)

    wider = write_config(tmp_path, tiny_dataset, model={**TINY["model"], "base_filters": 8},
                         train={"epochs": 6})
    with pytest.raises(UserError, match="trained with model.base_filters 4, not as the config"):
        train(load_config(wider), resume=True)
    other = write_config(tmp_path, tiny_dataset, optimizer={"name": "sgd", "learning_rate": 0.002},
                         train={"epochs": 6, "loss": "dice"})
    with pytest.raises(UserError, match=r"trained with optimizer.name adam, train.loss "
                       r"categorical_crossentropy, not as the config says; --resume goes on with "
                       r"the saved optimizer, loss and metrics"):
        train(load_config(other), resume=True)


def test_an_early_stopped_run_resumes_with_more_patience(tmp_path, tiny_dataset):
    def config(epochs: int, patience: int) -> Path:
        train = {"epochs": epochs, "patience": patience, "epoch_change_infer": False}
        return write_config(tmp_path, tiny_dataset, train=train)

    train(load_config(config(2, 5)))
    history = tmp_path / "run" / "history.json"
    state = read_state(tmp_path / "run")  # as if it had stopped early after epoch 2
    history.write_text(json.dumps({**state, "status": "early_stopped", "best_epoch": 1}))

    done = flexunet("train", "--config", str(config(4, 1)), "--resume")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("holds a finished run (2/2 epochs), early stopped 1 epoch after "
                                "its best (epoch 1); raise train.patience to train longer\n")
    assert train(load_config(config(2, 3)), resume=True).model is None  # both spent
    history.write_text(json.dumps({**state, "status": "interrupted"}))  # stopped after epoch 2
    assert train(load_config(config(2, 3)), resume=True).state.status == "completed"
    history.write_text(json.dumps({**state, "status": "early_stopped", "best_epoch": 1}))
    assert TrainState(**read_state(tmp_path / "run")).spent(2, 3) == ["train.epochs"]
    result = train(load_config(config(4, 3)), resume=True)
    assert result.model is not None and result.state.epoch == 4
    assert read_state(tmp_path / "run")["status"] in ("completed", "early_stopped")
    assert len(read_state(tmp_path / "run")["history"]["loss"]) == 4


def test_nan_loss_stops_with_one_line(tmp_path, tiny_dataset):
    optimizer = {"name": "sgd", "learning_rate": 1e30, "clipvalue": None}
    config = write_config(tmp_path, tiny_dataset, optimizer=optimizer)
    assert_one_line_error(flexunet("train", "--config", str(config)), "loss became NaN")
    assert read_state(tmp_path / "run")["status"] == "nan_loss"
    assert not (tmp_path / "run" / "models" / "last.keras").exists()
    assert_one_line_error(flexunet("train", "--config", str(config)),  # no way round in circles
                          "with no checkpoint to resume (models/last.keras): pass --overwrite")
    assert_one_line_error(flexunet("train", "--config", str(config), "--resume"),
                          "nothing to resume (not found); start again with --overwrite")


def test_a_nan_epoch_keeps_the_last_good_checkpoint(tmp_path):
    run = RunFolder(tmp_path)
    run.last.parent.mkdir()
    run.last.write_bytes(b"epoch 1")
    RunRecorder(run, TrainState(epochs=3, epoch=1)).on_epoch_end(1, {"loss": float("nan")})
    assert run.last.read_bytes() == b"epoch 1" and not run.history.exists()


@pytest.mark.once  # refused whatever the backend: run in one session
def test_bad_inputs_exit_2_with_one_line(tmp_path, tiny_dataset):
    missing = write_config(tmp_path, tmp_path / "no-such-dataset")
    assert_one_line_error(flexunet("train", "--config", str(missing)), "folder not found")
    config = write_config(tmp_path, tiny_dataset)
    assert_one_line_error(
        flexunet("train", "--config", str(config), "--resume"), "nothing to resume"
    )
    assert_one_line_error(
        flexunet("train", "--config", str(config), "--resume", "--overwrite"), "exclude each other"
    )
