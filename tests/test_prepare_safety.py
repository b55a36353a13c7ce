"""`prepare synthetic|msd|stats` never replace what a user made, read only what they should,
refuse absurd settings before any work, and answer bad input with one line."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_one_line_error, flexunet, no_hang
from test_prepare import pngs

from flexunet_k3.data.msd import prepare_msd
from flexunet_k3.data.nifti import read_volume, volume_from_bytes
from flexunet_k3.data.statistics import update_statistics
from flexunet_k3.data.synthetic import write_synthetic_dataset
from flexunet_k3.errors import UserError

NESTED_JSON = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    """3 tiny synthetic cases (read only: copy before changing)."""
    folder = tmp_path_factory.mktemp("safety") / "Task06_Lung"
    write_synthetic_dataset(folder, cases=3, seed=5, size=48, slices=12)
    return folder


def prepare(source: Path, output: Path, **options) -> dict:
    return prepare_msd(source, output, size=32, workers=1, **options)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder, by relative path: to show that nothing changed."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}


# --- files a user made ---------------------------------------------------------------------


def test_synthetic_refuses_to_replace_volumes_it_did_not_write(tmp_path):
    mine = tmp_path / "S" / "imagesTr" / "lung_001.nii.gz"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own scan")  # no dataset.json beside it
    with pytest.raises(UserError, match=r"already holds imagesTr/lung_001\.nii\.gz.*--overwrite"):
        write_synthetic_dataset(tmp_path / "S", cases=2, size=32, slices=4)
    assert tree(tmp_path) == {"S/imagesTr/lung_001.nii.gz": b"my own scan"}
    write_synthetic_dataset(tmp_path / "S", cases=2, size=32, slices=4, overwrite=True)
    assert mine.read_bytes()[:2] == b"\x1f\x8b"  # --overwrite names it: replaced


def test_synthetic_refuses_a_folder_where_a_volume_goes_even_with_overwrite(tmp_path):
    (tmp_path / "S" / "labelsTr" / "lung_002.nii.gz").mkdir(parents=True)
    with pytest.raises(UserError, match=r"labelsTr/lung_002\.nii\.gz: is a folder"):
        write_synthetic_dataset(tmp_path / "S", cases=2, size=32, slices=4, overwrite=True)
    assert tree(tmp_path) == {}


def test_msd_overwrite_replaces_only_what_it_wrote(task, tmp_path):
    out = tmp_path / "out"
    prepare(task, out, seed=1)
    first = set(pngs(out))
    (out / "notes.txt").write_text("mine")
    (out / "train" / "images" / "mine.png").write_bytes(b"my slice")
    (out / "test" / "masks" / "999_1.png").write_bytes(b"my mask")  # named like a slice
    prepare(task, out, seed=2, overwrite=True)  # the patients move between splits
    prepare(task, tmp_path / "fresh", seed=2)
    mine = {"train/images/mine.png": b"my slice", "test/masks/999_1.png": b"my mask"}
    assert first - set(pngs(tmp_path / "fresh"))  # slices of seed 1 that seed 2 does not write
    assert pngs(out) == {**pngs(tmp_path / "fresh"), **mine}  # and are gone
    assert (out / "notes.txt").read_text() == "mine"
    assert tree(out)["statistics.json"] == tree(tmp_path / "fresh")["statistics.json"]


def test_msd_overwrite_refuses_to_replace_a_slice_it_did_not_write(task, tmp_path):
    prepare(task, tmp_path / "fresh", seed=2)
    out = tmp_path / "out"
    prepare(task, out, seed=1)
    taken = sorted(set(pngs(tmp_path / "fresh")) - set(pngs(out)))[0]  # seed 2 writes it
    (out / taken).write_bytes(b"mine")
    before = tree(tmp_path)
    with pytest.raises(UserError, match=f"{taken}.*not written by `prepare msd`.*move it"):
        prepare(task, out, seed=2, overwrite=True)
    assert tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "out"]  # no staging left


def test_msd_overwrite_of_a_dataset_it_cannot_tell_is_its_own(task, tmp_path):
    out = tmp_path / "out"
    prepare(task, out)
    (out / "manifest.json").unlink()  # as an earlier version, or another tool, left it
    before = tree(out)
    with pytest.raises(UserError, match=r"statistics\.json.*not written by `prepare msd`"):
        prepare(task, out, overwrite=True)
    (out / "manifest.json").write_text(NESTED_JSON)
    with pytest.raises(UserError, match=r"manifest\.json: not a manifest of `prepare msd`"):
        prepare(task, out, overwrite=True)
    (out / "manifest.json").write_text(json.dumps(
        {"written_by": "flexunet prepare msd", "files": ["../../elsewhere.txt"]}
    ))
    with pytest.raises(UserError, match=r"manifest\.json: not a manifest"):
        prepare(task, out, overwrite=True)
    (out / "manifest.json").unlink()
    assert tree(out) == before


def test_stats_keeps_statistics_files_it_did_not_write(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "statistics.png").write_bytes(b"my chart")
    with pytest.raises(UserError, match=r"statistics\.png: not written by flexunet"):
        update_statistics(tmp_path)
    (tmp_path / "statistics.json").write_text('{"mine": 1}')
    with pytest.raises(UserError, match=r"statistics\.json: not flexunet's statistics"):
        update_statistics(tmp_path)
    assert (tmp_path / "statistics.png").read_bytes() == b"my chart"


# --- bounded reads and resources -----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cases": 99999999999999999999}, "--cases 99999999999999999999: need 1 to 10000"),
        ({"cases": 0}, "--cases 0: need 1 to 10000"),
        ({"seed": -1}, "--seed -1: need 0 to 4294967295"),
        ({"size": 1025}, "--size 1025: need 32 to 1024"),
        ({"slices": 1025}, "--slices 1025: need 4 to 1024"),
        ({"size": 1024, "slices": 1024}, "1073741824 voxels a case, more than 134217728"),
        ({"cases": 100, "size": 512, "slices": 128}, "need about 4 GB on disk, but .* has 1 GB"),
    ],
)
def test_synthetic_settings_out_of_range_refused_before_writing(
    tmp_path, monkeypatch, options, message
):
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(free=1e9))
    with pytest.raises(UserError, match=message):
        write_synthetic_dataset(tmp_path / "out", **{"cases": 1, **options})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"split": (float("nan"), 0.5, 0.5)}, "--split"),
        ({"split": (float("inf"), 0, 0)}, "--split"),
        ({"window": (float("-inf"), float("inf"))}, "--window"),
        ({"window": (-1e300, 0)}, "--window"),
        ({"keep_empty": float("nan")}, "--keep-empty nan: need 0 to 1"),
        ({"seed": -1}, "--seed -1: need 0 to 4294967295"),
        ({"workers": 100_000}, "--workers 100000: need 1 to 64"),
        ({"mini_test": -1}, "--mini-test -1: need 0 to 10000"),
        ({"size": 8}, "--size 8: need 16 to 4096"),
    ],
)
def test_msd_settings_out_of_range_refused_before_reading(tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        prepare_msd(tmp_path / "missing", tmp_path / "out", **options)  # checked first


def test_cli_absurd_case_count_one_line(tmp_path):
    done = flexunet("prepare", "synthetic", "-o", str(tmp_path / "S"), "--cases",
                    "99999999999999999999")
    assert_one_line_error(done, "--cases 99999999999999999999: need 1 to 10000")
    assert list(tmp_path.iterdir()) == []


def special_files(task: Path, tmp_path: Path):
    """(what, a function reading it) for each place a FIFO may stand."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    copy = shutil.copytree(task, tmp_path / "copy")
    dataset = tmp_path / "dataset"
    (dataset / "train" / "masks").mkdir(parents=True)
    (dataset / "train" / "images").mkdir()
    return {
        "source": (fifo, lambda: prepare(fifo, tmp_path / "out")),
        "dataset.json": (copy / "dataset.json", lambda: prepare(copy, tmp_path / "out")),
        "volume": (copy / "labelsTr" / "lung_002.nii.gz", lambda: prepare(copy, tmp_path / "out")),
        "statistics.json": (dataset / "statistics.json", lambda: update_statistics(dataset)),
        "mask": (dataset / "train" / "masks" / "001_1.png", lambda: update_statistics(dataset)),
    }


@pytest.mark.parametrize("place", ["source", "dataset.json", "volume", "statistics.json", "mask"])
def test_a_special_file_is_refused_before_reading(task, tmp_path, place):
    path, run = special_files(task, tmp_path)[place]
    if place != "source":
        path.unlink(missing_ok=True)
        os.mkfifo(path)
    with no_hang(), pytest.raises(UserError, match=f"{path.name}: is a special file"):
        run()


@pytest.mark.parametrize("where", ["../outside/lung_001.nii.gz", "ABSOLUTE"])
def test_dataset_json_paths_leaving_the_task_folder_refused(task, tmp_path, where):
    copy = shutil.copytree(task, tmp_path / "task")
    shutil.copytree(task / "imagesTr", tmp_path / "outside")
    where = where.replace("ABSOLUTE", str(tmp_path / "outside" / "lung_001.nii.gz"))
    meta = json.loads((copy / "dataset.json").read_text())
    meta["training"][0]["image"] = where
    (copy / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="outside the task folder"):
        prepare(copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def nifti_bytes(data: np.ndarray) -> bytes:
    return nib.Nifti1Image(data, np.eye(4)).to_bytes()


def test_volumes_of_unexpected_types_or_sizes_one_line(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    huge = bytearray(nifti_bytes(np.zeros((4, 4, 3), np.int16)))
    struct.pack_into("<4h", huge, 40, 3, 30000, 30000, 30000)  # dim: 2.7e13 voxels, no data
    cases = {
        "rgb": (nifti_bytes(rgb), "voxels of RGB colour; need real numbers"),
        "complex": (nifti_bytes(np.zeros((4, 4, 3), np.complex64)), "voxels of type complex64"),
        "huge": (bytes(huge), r"\(30000, 30000, 30000\): 27000000000000 voxels, more than"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.nii.gz"
        path.write_bytes(gzip.compress(data))
        with pytest.raises(UserError, match=message):
            read_volume(path)
        with pytest.raises(UserError, match=message):
            volume_from_bytes(path.read_bytes(), name)


# --- one line, not a traceback -------------------------------------------------------------


def link(tar: tarfile.TarFile, name: str, kind: bytes, target: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tar.addfile(info)


@pytest.mark.parametrize(
    ("member", "kind", "target", "message"),
    [
        ("dataset.json", tarfile.DIRTYPE, "", "is a folder in the archive"),
        ("dataset.json", tarfile.SYMTYPE, "../../etc/passwd", "is a symbolic link in the archive"),
        ("imagesTr/lung_002.nii.gz", tarfile.LNKTYPE, "Task/gone", "is a hard link in the archive"),
        ("imagesTr/lung_002.nii.gz", tarfile.DIRTYPE, "", "is a folder in the archive"),
        ("imagesTr/lung_002.nii.gz", tarfile.SYMTYPE, "lung_001.nii.gz", "is a symbolic link"),
    ],
)
def test_archive_members_of_unexpected_kinds_one_line(task, tmp_path, member, kind, target,
                                                      message):
    archive = tmp_path / "task.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(task.rglob("*")):
            name = path.relative_to(task).as_posix()
            if name != member and path.is_file():
                tar.add(path, arcname=f"Task/{name}")
        link(tar, f"Task/{member}", kind, target)
    with pytest.raises(UserError, match=f"task.tar:Task/{member}: {message}") as error:
        prepare(archive, tmp_path / "out")
    assert "\n" not in str(error.value)


def test_nested_json_one_line(task, tmp_path):
    copy = shutil.copytree(task, tmp_path / "task")
    (copy / "dataset.json").write_text(NESTED_JSON)
    with pytest.raises(UserError, match=r"dataset\.json: not a Decathlon dataset\.json"):
        prepare(copy, tmp_path / "out")
    archive = tmp_path / "task.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(copy, arcname="Task")
    with pytest.raises(UserError, match=r"task\.tar:Task/dataset\.json: not a Decathlon"):
        prepare(archive, tmp_path / "out")
    (tmp_path / "data" / "train" / "images").mkdir(parents=True)
    (tmp_path / "data" / "statistics.json").write_text(NESTED_JSON)
    with pytest.raises(UserError, match=r"statistics\.json: not flexunet's statistics"):
        update_statistics(tmp_path / "data")


@pytest.mark.parametrize("place", ["dataset.json", "imagesTr/lung_002.nii.gz"])
def test_a_folder_where_a_source_file_goes_says_so(task, tmp_path, place):
    copy = shutil.copytree(task, tmp_path / "task")
    (copy / place).unlink()
    (copy / place).mkdir()
    with pytest.raises(UserError, match=f"{place}: is a folder"):
        prepare(copy, tmp_path / "out")


def test_stats_of_a_file_or_a_statistics_folder_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"notes\.txt: is a file; give a dataset folder"):
        update_statistics(tmp_path / "notes.txt")
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "statistics.json").mkdir()
    with pytest.raises(UserError, match=r"statistics\.json: is a folder"):
        update_statistics(tmp_path)


def test_cli_one_case_is_singular(tmp_path):
    done = flexunet("-q", "prepare", "synthetic", "-o", str(tmp_path / "S"), "--cases", "1",
                    "--size", "32", "--slices", "4")
    assert done.returncode == 0, done.stderr
    assert f"wrote 1 case (001) to {tmp_path / 'S'}" in " ".join(done.stdout.split())


def test_volume_from_bytes_reads_only_the_header_s_size():
    """A gzip bomb: the header's 4x4x3 voxels are read, not the 128 MiB of zeros after them."""
    stream = io.BytesIO()
    with gzip.GzipFile(fileobj=stream, mode="wb", compresslevel=1) as bomb:
        bomb.write(nifti_bytes(np.ones((4, 4, 3), np.int16)))
        for _ in range(8):
            bomb.write(bytes(2**24))
    tracemalloc.start()
    try:
        assert volume_from_bytes(stream.getvalue(), "bomb").data.shape == (4, 4, 3)
        assert tracemalloc.get_traced_memory()[1] < 2**24
    finally:
        tracemalloc.stop()


KILLED_WITH_WORKERS = """
import os, signal, time
from flexunet_k3.data import msd
pool = msd.worker_pool(2)
futures = [pool.submit(time.sleep, 600) for _ in range(2)]
while len(pool._processes) < 2:
    time.sleep(0.05)
print(*pool._processes, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_pool_workers_end_when_prepare_msd_is_killed_outright():
    parent = subprocess.run([sys.executable, "-c", KILLED_WITH_WORKERS], capture_output=True,
                            text=True, timeout=60)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    workers = [int(pid) for pid in parent.stdout.split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 30
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, workers))  # without the watch they sleep on for 10 minutes


def test_a_pool_worker_that_starts_after_prepare_msd_was_killed_ends():
    """The race the test above can lose: the parent is gone before the worker's initializer
    runs, so the worker's own parent is already another process."""
    gone = _ended_pid()
    worker = subprocess.run(
        [sys.executable, "-c", "import time\nfrom flexunet_k3.data import msd\n"
         f"msd._start_worker({gone})\ntime.sleep(600)"],
        capture_output=True, text=True, timeout=60)
    assert (worker.returncode, worker.stderr) == (1, "")  # its watch's exit, no error


FORK_SERVER_DEFAULT = """
import multiprocessing, os
from flexunet_k3.data import msd
multiprocessing.set_start_method("forkserver")  # the default from Python 3.14 on Linux
with msd.worker_pool(1) as pool:
    assert pool.submit(os.getppid).result() == os.getpid()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_pool_workers_are_this_process_s_children_under_a_fork_server_default():
    done = subprocess.run([sys.executable, "-c", FORK_SERVER_DEFAULT], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _ended_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _running(pid: int) -> bool:
    """Whether `pid` runs (an orphan ended but not yet reaped is a zombie: not running)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _die(job) -> None:
    os._exit(9)  # as a worker the system kills for want of memory


def test_a_worker_that_dies_is_one_line_and_writes_nothing(task, tmp_path, monkeypatch):
    from flexunet_k3.data import msd

    monkeypatch.setattr(msd, "convert_case", _die)  # a worker pickles it by name
    with pytest.raises(UserError, match="a worker process ended abruptly .* fewer --workers"):
        prepare_msd(task, tmp_path / "out", size=32, workers=2)
    assert not (tmp_path / "out").exists()
