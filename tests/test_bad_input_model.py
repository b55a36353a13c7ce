"""Bad input around a trained model, table-driven like test_bad_input.py (one line, exit 2,
every file unchanged), on this session's backend: damaged or foreign .keras files, a model that
is not the config's, output folders holding files of the same names, a held run-folder lock."""

import json
import shutil
import socket
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_bad_input import Case, both, fifo, folder, link, nifti, png, run_case, text

from flexunet_k3.run_folder import RunFolder

C = ["--config", "{t}/r/config.yaml"]
MASK = np.zeros((16, 16), np.uint8)
CT = np.full((16, 16, 3), -1000, np.int16)
NAN_CT = CT.astype(np.float32)
NAN_CT[8, 8, 1] = np.nan


def damaged(name: str, data: bytes):
    return text(f"r/run/models/{name}", data)


def earlier_metrics(t: Path) -> None:
    """models/last.keras as an earlier flexunet saved it: compiled with a metric class that this
    one no longer has (the per-class ForegroundScore)."""
    path = t / "r/run/models/last.keras"
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["config.json"] = files["config.json"].replace(b"SegmentationScores", b"ForegroundScore")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def flat_affine(t: Path) -> None:
    """A volume whose first two voxel axes both point along the patient's x (sform only)."""
    image = nib.Nifti1Image(CT, None)
    image.set_sform(np.array([[1.0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]), code=1)
    (t / "ct").mkdir()
    nib.save(image, t / "ct" / "a.nii.gz")


def replaced(name: str, by) -> callable:
    """The run's file `name` removed, `by` (a builder: folder, fifo) put in its place."""
    def setup(t: Path) -> None:
        (t / "r/run" / name).unlink()
        by(f"r/run/{name}")(t)
    return setup


def claimed_folder(name: str) -> callable:
    """A folder at `name` in the run folder, which the run's manifest lists as a file of its."""
    def setup(t: Path) -> None:
        manifest = t / "r/run/.flexunet-run.json"
        record = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({"files": [*record["files"], name]}))
        (t / "r/run" / name).mkdir()
    return setup


def lock(pid) -> callable:
    """A lock file of this host holding `pid` (JSON text)."""
    holder = f'"host": "{socket.gethostname()}", "since": "x", "command": "flexunet train"'
    return text("r/run/.flexunet-run.lock", f'{{"pid": {pid}, {holder}}}')


RESUME = ["train", *C, "--resume", "--set", "train.epochs=3"]
CASES = [
    Case("no-model", ["evaluate", *C], ("best.keras", "no trained model"),
         lambda t: (t / "r/run/models/best.keras").unlink()),
    Case("keras-truncated", ["evaluate", *C], ("best.keras", "truncated"),
         damaged("best.keras", b"PK\x03\x04 cut short")),
    Case("keras-foreign-zip", ["infer", *C, "--images", "{t}/images", "--output", "{t}/out"],
         ("best.keras", "cannot load this model"),
         both(png("images/a.png", MASK), lambda t: shutil.make_archive(
             str(t / "r/run/models/best"), "zip", t / "images"),
              lambda t: (t / "r/run/models/best.zip").replace(t / "r/run/models/best.keras"))),
    Case("model-not-the-configs", ["evaluate", *C, "--set", "model.base_filters=8"],
         ("trained with model.base_filters 4",)),
    Case("model-other-size", ["evaluate", *C, "--set", "model.image_height=64",
                              "--set", "model.image_width=64"], ("trained with",)),
    Case("infer-output-holds", ["infer", *C, "--images", "{t}/images", "--output", "{t}/out"],
         ("already holds a.png", "--overwrite"),
         both(png("images/a.png", MASK), png("out/a.png", MASK))),
    Case("infer-output-is-input", ["infer", *C, "--images", "{t}/images", "--output",
                                   "{t}/images"], ("is the input folder",),
         png("images/a.png", MASK)),
    Case("infer-corrupt-image", ["infer", *C, "--images", "{t}/images", "--output", "{t}/out"],
         ("b.png", "cannot read image"),
         both(png("images/a.png", MASK), text("images/b.png", b"\x89PNG broken"))),
    Case("volumes-output-holds", ["infer", *C, "--volumes", "{t}/ct", "--output", "{t}/out"],
         ("already holds a.nii.gz", "--overwrite"),
         both(nifti("ct/a.nii.gz", CT), text("out/a.nii.gz", "a mask of mine"))),
    Case("volumes-4d", ["infer", *C, "--volumes", "{t}/ct", "--output", "{t}/out"],
         ("a.nii.gz", "4D"), nifti("ct/a.nii.gz", np.zeros((8, 8, 2, 2), np.int16))),
    Case("volumes-degenerate-affine", ["infer", *C, "--volumes", "{t}/ct", "--output",
                                       "{t}/out"], ("a.nii.gz", "affine"), flat_affine),
    Case("volumes-nan", ["infer", *C, "--volumes", "{t}/ct", "--output", "{t}/out"],
         ("a.nii.gz", "NaN or infinite values in 1 voxel"), nifti("ct/a.nii.gz", NAN_CT)),
    Case("volumes-no-voxels", ["infer", *C, "--volumes", "{t}/ct", "--output", "{t}/out"],
         ("a.nii.gz", "shape (32, 32, 0) holds no voxels"),
         nifti("ct/a.nii.gz", np.zeros((32, 32, 0), np.int16))),
    Case("volumes-output-is-input", ["infer", *C, "--volumes", "{t}/ct/a.nii.gz", "--output",
                                     "{t}/ct", "--overwrite"], ("a.nii.gz", "is an input volume"),
         nifti("ct/a.nii.gz", CT)),
    Case("volumes-written-twice", ["infer", *C, "--volumes", "{t}/ct", "--output", "{t}/out",
                                   "--probabilities"], ("a_probabilities.nii.gz", "twice"),
         both(nifti("ct/a.nii.gz", CT), nifti("ct/a_probabilities.nii.gz", CT))),
    Case("volumes-empty-folder", ["infer", *C, "--volumes", "{t}/ct"], ("no .nii",),
         folder("ct")),
    Case("volumes-no-split-record", ["evaluate", *C, "--volumes"], ("splits.json",)),
    Case("train-finished-run", ["train", *C], ("finished run", "--resume", "--overwrite")),
    Case("train-resume-earlier-metrics", ["train", *C, "--resume", "--set", "train.epochs=3"],
         ("saved by an earlier flexunet", "ForegroundScore", "--overwrite"), earlier_metrics),
    Case("resume-history-fifo", RESUME, ("history.json", "special file", "move it away"),
         replaced("history.json", fifo)),
    Case("resume-history-folder", RESUME, ("history.json", "is a folder where a file goes"),
         replaced("history.json", folder)),
    Case("resume-manifest-folder", RESUME, (".flexunet-run.json", "is a folder where a file"),
         replaced(".flexunet-run.json", folder)),
    Case("resume-last-folder", RESUME, ("last.keras", "is a folder"),
         replaced("models/last.keras", folder)),
    Case("resume-last-fifo", RESUME, ("last.keras", "special file"),
         replaced("models/last.keras", fifo), subprocess=True),
    Case("resume-last-dangling", RESUME, ("last.keras", "nothing to resume", "link to nothing"),
         replaced("models/last.keras", lambda name: link(name, "gone.keras"))),
    Case("evaluate-best-folder", ["evaluate", *C], ("best.keras", "no trained model", "folder"),
         replaced("models/best.keras", folder)),
    Case("resume-config-folder", RESUME, ("run/config.yaml", "is a folder where a file goes"),
         replaced("config.yaml", folder)),
    Case("overwrite-history-folder", ["train", *C, "--overwrite"],
         ("history.json", "is a folder where a file goes"), replaced("history.json", folder)),
    Case("evaluate-own-report-a-folder", ["evaluate", *C],
         ("evaluation.csv", "is a folder where a file goes"), claimed_folder("evaluation.csv")),
    Case("lock-pid-infinite", ["evaluate", *C], ("lock", "unreadable"), lock("1e400")),
    Case("lock-pid-huge", ["evaluate", *C], ("lock", "unreadable"), lock(10**20)),
    Case("lock-folder", ["evaluate", *C], (".flexunet-run.lock", "is a folder"),
         folder("r/run/.flexunet-run.lock")),
    Case("lock-fifo", ["evaluate", *C], (".flexunet-run.lock", "special file"),
         fifo("r/run/.flexunet-run.lock"), subprocess=True),
    Case("train-resume-and-overwrite", ["train", *C, "--resume", "--overwrite"],
         ("--resume and --overwrite",)),
]
LOCKED = [
    Case("locked-train", ["train", *C, "--overwrite"], ("in use by flexunet train",)),
    Case("locked-evaluate", ["evaluate", *C], ("in use by flexunet train",)),
    Case("locked-infer", ["infer", *C, "--images", "{t}/images"], ("in use by flexunet train",),
         png("images/a.png", MASK)),
]


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the tiny trained run (config.yaml and run/) in tmp_path/r."""
    shutil.copytree(trained_run.parent, tmp_path / "r")
    return tmp_path / "r"


def check(done: tuple[int, str], case: Case) -> None:
    code, stderr = done
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
    assert code == 2 and "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    for fragment in case.fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_with_a_model(case, run_copy, tmp_path, capsys):
    check(run_case(case, tmp_path, capsys), case)


@pytest.mark.parametrize("case", LOCKED, ids=[case.id for case in LOCKED])
def test_a_held_lock_refuses(case, run_copy, tmp_path, capsys):
    with RunFolder(run_copy / "run").locked("flexunet train"):  # this live process holds it
        check(run_case(case, tmp_path, capsys), case)
