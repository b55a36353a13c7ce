"""Writing files safely: staged folders, and the temporaries a process killed outright leaves."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flexunet_k3.files import HOST, staged, temporary_prefix
from flexunet_k3.run_folder import RunFolder, TrainState


def test_staging_lies_inside_an_existing_output_even_through_a_link(tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)  # another file system, or a mount, would sit here
    with staged(link) as staging:
        assert staging.parent == real
        (staging / "a.png").write_text("a")
    assert sorted(p.name for p in real.iterdir()) == ["a.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_staging_moves_no_file_when_a_target_folder_cannot_be_written(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    (out / "a.png").write_text("old")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "overlays")
    with pytest.raises(PermissionError, match="no file was moved in"), staged(out) as staging:
        (staging / "a.png").write_text("new")
        (staging / "overlays").mkdir()
        (staging / "overlays" / "a.png").write_text("new")
    assert (out / "a.png").read_text() == "old" and not any((out / "overlays").iterdir())
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "overlays"]


def test_a_folder_that_cannot_be_made_is_named_not_its_staging_twin(tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".flexunet-staging.x1y2"))

    monkeypatch.setattr("tempfile.mkdtemp", refuse)
    with pytest.raises(PermissionError) as caught, staged(tmp_path / "new"):
        pass
    assert caught.value.filename == str(tmp_path / "new")


DIE_WRITING = """
import os, signal, sys
from pathlib import Path
from flexunet_k3.files import replacing, staged, temporary_prefix
run = Path(sys.argv[1])
(run / "models" / (temporary_prefix("saving") + "x1")).mkdir(parents=True)  # as save_model
with staged(run) as staging, replacing(run / "models" / "last.keras") as temporary:
    (staging / "a.png").write_text("new")
    temporary.write_text("half a model")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_temporaries_of_a_killed_process_are_removed_by_the_next(tmp_path):
    run = tmp_path / "run"
    writer = subprocess.Popen([sys.executable, "-c", DIE_WRITING, str(run)])
    assert writer.wait(timeout=60) == -signal.SIGKILL
    mine = f".flexunet-*.{writer.pid}-{HOST}.*"

    def named(pattern):
        return {path.relative_to(run).as_posix() for path in run.rglob(pattern)}

    dead = named(mine)
    assert len(dead) == 3  # its staging folder, half a model, the model's unzipped save
    kept = [  # a live process's, another host's (a shared disk), a user's own
        run / "models" / f"{temporary_prefix('tmp')}y2.keras",
        run / f".flexunet-staging.{writer.pid}-{'0' * 8}.z3",
        run / ".flexunet-tmp.notes",
    ]
    for path in kept:
        path.write_text("keep")
    with staged(run) as staging:  # a command writing into the folder (not below it)
        (staging / "b.png").write_text("b")
    assert named(mine) == {name for name in dead if name.startswith("models/")}
    with RunFolder(run).locked("flexunet train"):  # a command in the run folder: all of it
        pass
    assert not named(mine)
    assert all(path.read_text() == "keep" for path in kept)
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".png") == ["b.png"]


def test_a_metric_no_image_scores_survives_the_run_state(tmp_path):
    run = RunFolder(tmp_path)
    TrainState(epochs=2, epoch=1, history={"loss": [0.5], "val_dice_other": [math.nan]}).save(
        run.history)  # JSON has no NaN: written as null
    assert '"val_dice_other": [\n      null' in run.history.read_text()
    state = run.read_state()
    assert state.history["loss"] == [0.5] and math.isnan(state.history["val_dice_other"][0])
