"""The run folder keeps a user's files: train writes only what its manifest says it owns, and a
lock keeps a second run out while one writes."""

import os
import signal
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import assert_one_line_error, flexunet, write_config

from flexunet_k3.config import load_config
from flexunet_k3.data.dataset import SegmentationDataset, dataset_from_config
from flexunet_k3.errors import UserError
from flexunet_k3.run_folder import RunFolder
from flexunet_k3.training import train

QUICK = {"epochs": 1, "epoch_change_infer": False}


def test_a_users_config_beside_the_run_is_never_replaced(tmp_path, tiny_dataset):
    config = write_config(tmp_path, tiny_dataset, train={**QUICK, "output_dir": "."})
    mine = config.read_text() + "# my notes\n"
    config.write_text(mine)
    done = flexunet("train", "--config", str(config), "--overwrite")
    assert_one_line_error(done, str(config), "train.output_dir")
    assert config.read_text() == mine
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.yaml"]


def test_a_users_config_in_a_run_from_before_the_manifest_is_never_replaced(tmp_path,
                                                                           tiny_dataset):
    config = write_config(tmp_path, tiny_dataset, train={**QUICK, "output_dir": "."})
    mine = config.read_text() + "# my notes\n"
    config.write_text(mine)
    (tmp_path / "history.json").write_text('{"epochs": 1, "epoch": 1, "status": "completed"}')
    with pytest.raises(UserError, match="config.yaml: not written by flexunet train"):
        train(load_config(config), overwrite=True)
    assert config.read_text() == mine


def test_files_train_did_not_write_need_overwrite(tmp_path, tiny_dataset):
    config = write_config(tmp_path, tiny_dataset, train=QUICK)
    history = tmp_path / "run" / "history.json"
    history.parent.mkdir()
    history.write_text('{"mine": true}')
    with pytest.raises(UserError, match="history.json.* not written by flexunet train"):
        train(load_config(config))
    assert history.read_text() == '{"mine": true}'
    assert train(load_config(config), overwrite=True).state.status == "completed"


def test_overwrite_removes_only_the_runs_own_files(tmp_path, tiny_dataset):
    config = write_config(tmp_path, tiny_dataset, train={"epochs": 2, "num_infer_images": 1})
    train(load_config(config))
    run = tmp_path / "run"
    earlier = run / "epoch_change_infer" / "Epoch_2_301_0.png"
    assert earlier.is_file()
    mine = [run / "epoch_change_infer" / "Epoch_7_scan.png", run / "evaluation.json"]
    for path in mine:
        path.write_text("mine")
    train(load_config(config, ["train.epochs=1"]), overwrite=True)
    assert not earlier.exists()  # the earlier run's, not the new one's: removed
    assert (run / "epoch_change_infer" / "Epoch_1_301_0.png").is_file()
    assert all(path.read_text() == "mine" for path in mine)


def test_a_run_from_before_the_manifest_resumes(tmp_path, tiny_dataset):
    config = write_config(tmp_path, tiny_dataset, train=QUICK)
    train(load_config(config))
    (tmp_path / "run" / ".flexunet-run.json").unlink()
    state = train(load_config(config, ["train.epochs=2"]), resume=True).state
    assert state.status == "completed" and state.epoch == 2


def test_infer_and_evaluate_files_in_the_run_folder_go_with_the_run(tmp_path, tiny_dataset,
                                                                     monkeypatch):
    config = write_config(tmp_path, tiny_dataset, train=QUICK)
    run = tmp_path / "run"
    train(load_config(config))
    (run / ".flexunet-run.json").unlink()  # a run from before the manifest: it keeps its files
    monkeypatch.chdir(tmp_path)
    for command in ("infer", "evaluate"):  # the second time over the first's files, its own
        for _ in range(2):
            done = flexunet(command, "--config", str(config), "--output", f"run/{command}",
                            *(["--overlay"] if command == "infer" else []))
            assert done.returncode == 0, done.stderr
    owned = RunFolder(run).owned()
    written = [run / "infer" / "301_0.png", run / "infer" / "overlays" / "301_0.png",
               run / "infer" / "mosaic" / "mosaic.png", run / "evaluate" / "evaluation.csv"]
    assert {*written, run / "config.yaml", run / "models" / "best.keras"} <= owned
    mine = run / "infer" / "301_0.jpg"
    mine.write_text("mine")
    train(load_config(config), overwrite=True)
    assert not any(path.exists() for path in written) and mine.read_text() == "mine"


def test_a_second_run_is_refused_naming_the_holder(tmp_path, tiny_dataset):
    config = write_config(tmp_path, tiny_dataset, train=QUICK)
    run = tmp_path / "run"
    with RunFolder(run).locked("flexunet train"):
        held = sorted(run.iterdir())
        for command in ("train", "evaluate"):
            done = flexunet(command, "--config", str(config))
            assert_one_line_error(done, f"in use by flexunet train (pid {os.getpid()} on "
                                  f"{socket.gethostname()}, since ")
        assert sorted(run.iterdir()) == held  # nothing written, the lock left to its holder
    assert not run.exists()  # the holder made the folder for its lock and took it away


HOLD_AND_DIE = """
import os, signal, sys
from pathlib import Path
from flexunet_k3.run_folder import RunFolder
with RunFolder(Path(sys.argv[1])).locked("flexunet train"):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, tiny_dataset):
    config = write_config(tmp_path, tiny_dataset, train=QUICK)
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_DIE, str(run)])
    assert holder.wait(timeout=60) == -signal.SIGKILL
    stale = [path.name for path in run.iterdir()]
    assert stale  # the dead process's lock
    with pytest.warns(UserWarning, match=f"stale lock of pid {holder.pid} .*flexunet train"):
        assert train(load_config(config)).state.status == "completed"
    assert not any(path.name in stale for path in run.iterdir())  # released at the end


def test_two_fills_of_one_disk_cache_do_not_collide(tmp_path, tiny_dataset, monkeypatch):
    config = load_config(write_config(tmp_path, tiny_dataset, data={"cache": "disk"}))
    fill, others = SegmentationDataset._fill_cache, []

    def fill_while_another_process_does(self, workers):
        monkeypatch.setattr(SegmentationDataset, "_fill_cache", fill)
        others.append(dataset_from_config(config, "valid", training=False))  # fills it first
        fill(self, workers)

    monkeypatch.setattr(SegmentationDataset, "_fill_cache", fill_while_another_process_does)
    first = dataset_from_config(config, "valid", training=False)
    assert np.array_equal(first[0][0], others[0][0][0])
    assert sorted(path.suffix for path in (tmp_path / "run" / "cache").iterdir()) == [
        ".json", ".npy", ".npy"
    ]


def test_a_damaged_disk_cache_is_decoded_again(tmp_path, tiny_dataset):
    config = load_config(write_config(tmp_path, tiny_dataset, data={"cache": "disk"}))
    first = dataset_from_config(config, "valid", training=False)[0][0]
    [images] = (tmp_path / "run" / "cache").glob("*-images.npy")
    images.write_bytes(images.read_bytes()[:-100])  # a disk that filled up, say
    with pytest.warns(UserWarning, match="cached images are damaged; decoding them again"):
        again = dataset_from_config(config, "valid", training=False)
    assert np.array_equal(again[0][0], first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset_from_config(config, "valid", training=False)  # whole again: reused quietly
