"""`flexunet train` stopped: Ctrl-C (once, twice, while building, mid-epoch, at an epoch's end)
and a kill keep the run at its last checkpoint, and --resume trains as if never stopped."""

import json
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import keras
import pytest
from conftest import flexunet, write_config
from test_train import read_state

from flexunet_k3 import callbacks, training
from flexunet_k3.config import load_config
from flexunet_k3.data.dataset import dataset_from_config
from flexunet_k3.interrupt import Interrupted
from flexunet_k3.run_folder import STATE_MEMBER
from flexunet_k3.training import train


def wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def steps_trained(run: Path) -> int:
    """The optimizer steps that the run's models/last.keras has taken."""
    return int(keras.saving.load_model(run / "models" / "last.keras").optimizer.iterations)


def test_ctrl_c_saves_last_and_resume_finishes_the_run(tmp_path, tiny_dataset):
    config = write_config(tmp_path, tiny_dataset, train={"epochs": 6})
    run = tmp_path / "run"
    process = subprocess.Popen(
        ["flexunet", "train", "--config", str(config), "--set", "train.patience=50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:  # history.json appears when epoch 1 is recorded: the signal lands in epoch 2
        wait_for(lambda: (run / "history.json").is_file() or process.poll() is not None, 600)
    finally:
        process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 130, stderr
    assert f"--config {config} --set train.patience=50 --resume" in stderr
    assert stderr.rstrip().endswith("interrupted")
    state = read_state(run)
    assert state["status"] == "interrupted" and 1 <= state["epoch"] < 6
    last = keras.saving.load_model(run / "models" / "last.keras")
    assert int(last.optimizer.iterations) > 0

    done = flexunet("train", "--config", str(config), "--set", "train.patience=50", "--resume")
    assert done.returncode == 0, done.stderr
    state = read_state(run)
    assert state["status"] == "completed" and state["epoch"] == 6
    assert len(state["history"]["loss"]) == 6
    epochs = [line.split(",")[0] for line in (run / "eval" / "train_losses.csv").open()]
    assert epochs == ["epoch", "1", "2", "3", "4", "5", "6"]
    assert (run / "epoch_change_infer" / "mosaic" / "Epoch_6.png").is_file()


KILLED_AFTER_SAVING = """
import json, os, signal, sys
from flexunet_k3 import callbacks
from flexunet_k3.config import load_config
from flexunet_k3.training import train

def save_then_die(model, path, extra):
    saving(model, path, extra)
    if json.loads(*extra.values())["epoch"] == 2:  # before best.keras, curves, history.json
        os.kill(os.getpid(), signal.SIGKILL)

saving, callbacks.save_model = callbacks.save_model, save_then_die
train(load_config(sys.argv[1]))
"""


def test_a_kill_after_saving_the_checkpoint_loses_and_repeats_no_epoch(tmp_path, tiny_dataset):
    config = write_config(tmp_path, tiny_dataset,
                          train={"epochs": 3, "patience": 50, "epoch_change_infer": False})
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_SAVING, str(config)],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "run"
    assert read_state(run)["epoch"] == 1  # history.json one epoch behind models/last.keras

    per_epoch = steps_trained(run) // 2
    with pytest.warns(UserWarning, match=r"behind .*last.keras \(epoch 2\)"):
        state = train(load_config(config), resume=True).state
    assert state.epoch == 3 and steps_trained(run) == 3 * per_epoch  # epoch 2 not trained again
    assert len(read_state(run)["history"]["loss"]) == 3
    assert len((run / "eval" / "train_losses.csv").read_text().splitlines()) == 4
    with zipfile.ZipFile(run / "models" / "best.keras") as best:  # the best epoch's weights
        assert json.loads(best.read(STATE_MEMBER))["epoch"] == state.best_epoch


def test_ctrl_c_during_epoch_end_callbacks_lets_them_finish(tmp_path, tiny_dataset, monkeypatch):
    class CtrlCWhilePredicting(training.EpochChangeInfer):
        def on_epoch_end(self, epoch, logs=None):
            signal.raise_signal(signal.SIGINT)
            super().on_epoch_end(epoch, logs)

    monkeypatch.setattr(training, "EpochChangeInfer", CtrlCWhilePredicting)
    config = write_config(tmp_path, tiny_dataset, train={"epochs": 3})
    with pytest.raises(KeyboardInterrupt) as caught:
        train(load_config(config))
    assert isinstance(caught.value, Interrupted)  # raised at epoch 2's start, not mid-predict
    run = tmp_path / "run"
    assert (run / "epoch_change_infer" / "mosaic" / "Epoch_1.png").is_file()
    state = read_state(run)
    assert state["status"] == "interrupted" and state["epoch"] == 1
    assert len(state["history"]["loss"]) == 1
    assert keras.saving.load_model(run / "models" / "last.keras").optimizer.iterations > 0


def test_ctrl_c_mid_epoch_drops_its_steps_and_resume_trains_as_never_stopped(
        tmp_path, tiny_dataset, monkeypatch):
    class CtrlCInEpoch2(training.ProgressBars):
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch_now == 1 and batch == 0:
                signal.raise_signal(signal.SIGINT)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_now = epoch
            super().on_epoch_begin(epoch, logs)

    config = write_config(tmp_path, tiny_dataset,
                          train={"epochs": 3, "patience": 50, "epoch_change_infer": False})
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(training, "ProgressBars", CtrlCInEpoch2)
        with pytest.raises(Interrupted):  # at the next step of epoch 2
            train(load_config(config))
    assert read_state(run)["epoch"] == 1
    per_epoch = steps_trained(run)  # epoch 1's: the step of epoch 2 is not kept
    assert per_epoch == len(dataset_from_config(load_config(config), "train", training=True))
    step_by_step = write_config(tmp_path, tiny_dataset, train={
        "epochs": 3, "patience": 50, "epoch_change_infer": False, "jit": "off"})
    assert train(load_config(step_by_step), resume=True).model.jit_compile is False  # as set
    assert steps_trained(run) == 3 * per_epoch  # as in a run never stopped


@pytest.mark.parametrize("saved", [False, True], ids=["before-the-checkpoint", "after-it"])
def test_a_second_ctrl_c_while_saving_keeps_the_records_at_the_checkpoint(
        tmp_path, tiny_dataset, monkeypatch, saved):
    def second_ctrl_c(model, path, extra):
        if json.loads(*extra.values())["epoch"] == 2:
            if saved:
                saving(model, path, extra)
            raise KeyboardInterrupt  # as a second Ctrl-C does, at once
        saving(model, path, extra)

    saving, run = callbacks.save_model, tmp_path / "run"
    config = write_config(tmp_path, tiny_dataset,
                          train={"epochs": 3, "patience": 50, "epoch_change_infer": False})
    with monkeypatch.context() as patch:
        patch.setattr(callbacks, "save_model", second_ctrl_c)
        with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # brought up to date from the checkpoint
            train(load_config(config))
    state = read_state(run)  # the epoch last.keras holds, not the one being saved
    assert state["status"] == "interrupted" and state["epoch"] == 1 + saved
    per_epoch = steps_trained(run) // state["epoch"]
    train(load_config(config), resume=True)
    assert steps_trained(run) == 3 * per_epoch and len(read_state(run)["history"]["loss"]) == 3


def test_ctrl_c_while_the_model_builds_stops_before_training(tmp_path, tiny_dataset, monkeypatch):
    def compile_with_ctrl_c(config):
        signal.raise_signal(signal.SIGINT)  # as if pressed during JAX's compilation
        return compile_model(config)

    compile_model = training.compile_model
    monkeypatch.setattr(training, "compile_model", compile_with_ctrl_c)
    with pytest.raises(Interrupted):
        train(load_config(write_config(tmp_path, tiny_dataset)))
    assert not (tmp_path / "run" / "history.json").exists()
    assert not (tmp_path / "run" / "models" / "last.keras").exists()
