"""Writing files safely (atomic replacement, staged output folders, JSON and text) and reading
a user's files with bounds (regular files only, so a pipe or a device never blocks a read).

Every command writes through these, so an error or Ctrl-C never leaves a half-written file.
Importing this module does not import keras.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from flexunet_k3.errors import UserError, first_line, listing

MAX_JSON_BYTES = 64 * 2**20  # a record or dataset.json this command reads: far more than any needs


def _this_host() -> str:
    """A digest of the host name and the process-id namespace: containers on one host may
    share its name but not their process ids."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()} {namespace}".encode()).hexdigest()[:8]


# A temporary's name says whose it is (pid, and a digest of the host), so that a later command
# can remove those of a process killed outright: `.flexunet-<kind>.<pid>-<host>.`; staging and
# saving are folders this tool made and filled, tmp a file.
HOST = _this_host()
TEMPORARY = re.compile(r"\.flexunet-(staging|saving|tmp)\.(\d{1,10})-([0-9a-f]{8})\.")


def temporary_prefix(kind: str) -> str:
    """The start of the name of a temporary file or folder of `kind` this process makes."""
    return f".flexunet-{kind}.{os.getpid()}-{HOST}."


def remove_abandoned(folder: Path, recursive: bool = False) -> None:
    """Remove the temporaries in `folder` whose process is gone from this host (it was killed
    outright, so it could not); those of live processes and of other hosts stay."""
    try:
        entries = list(folder.iterdir())
    except OSError:  # not there, or not ours to list: nothing to clean
        return
    for entry in entries:
        match = TEMPORARY.match(entry.name)
        inside = entry.is_dir() and not entry.is_symlink()
        if not (match and match[3] == HOST and not process_alive(int(match[2]))):
            if recursive and inside:
                remove_abandoned(entry, recursive=True)
        elif match[1] == "tmp" and entry.is_file() and not entry.is_symlink():
            with suppress(OSError):  # a folder not ours to write: left as it is
                entry.unlink()
        elif match[1] != "tmp" and inside:
            # A staging or saving folder this tool made (its prefix names this host and a dead
            # pid), removed as its TemporaryDirectory would have been: never a user's folder.
            # rmtree does not follow links, and `entry` itself is none.
            shutil.rmtree(entry, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # another user's process
        pass
    return True


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once written, it replaces `path` (os.replace).

    A crash or Ctrl-C while writing leaves the old file whole and removes the temporary one. A
    folder or special file at `path` is refused before anything is written.
    """
    refuse_non_files([path], "move it away")
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own (two writers never share one), created by the writer with the usual
    # mode; its suffix tells writers such as Pillow the format
    temporary = path.with_name(f"{temporary_prefix('tmp')}{uuid.uuid4().hex[:12]}{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as exc:
        if exc.filename == str(temporary):  # name the file asked for (the folder is read-only)
            exc.filename = str(path)
        raise
    finally:
        with suppress(OSError):  # a read-only folder: the error above says so
            temporary.unlink(missing_ok=True)


def copy_file(source: Path, target: Path) -> None:
    """Copy `source` over `target`, replacing it only once the copy is whole (`replacing`)."""
    with replacing(target) as temporary:
        shutil.copyfile(source, temporary)


@contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """Yield a temporary folder; after the block, move the files written there into `folder`
    (replacing those of the same name).

    The temporary folder lies inside `folder` where it exists (so on its file system, through a
    link or a mount too), else beside it. An error or Ctrl-C inside the block leaves `folder` as
    it was; so does a target folder that cannot be written: all are made and checked before
    the first file moves. The temporary folder is removed, and so are those left there by
    processes killed outright.
    """
    home = folder.resolve() if folder.is_dir() else folder.parent
    remove_abandoned(home)
    try:
        home.mkdir(parents=True, exist_ok=True)
        temporary = tempfile.TemporaryDirectory(prefix=temporary_prefix("staging"), dir=home,
                                                ignore_cleanup_errors=True)
    except OSError as exc:  # named as the folder asked for, not its temporary twin
        raise OSError(exc.errno, exc.strerror, str(folder)) from None
    with temporary as name:
        staging = Path(name)
        yield staging
        files = sorted(path for path in staging.rglob("*") if path.is_file())
        targets = [folder / path.relative_to(staging) for path in files]
        for parent in sorted({target.parent for target in targets}):
            parent.mkdir(parents=True, exist_ok=True)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "cannot write here; no file was moved in",
                                      str(parent))
        for written, target in zip(files, targets, strict=True):
            os.replace(written, target)


def check_output_folder(output: Path, folders: Sequence[str] = ()) -> None:
    """Refuse, before any work, an output that is a file (or a link to nothing) or lies under
    one, or that holds one where one of `folders` (paths relative to it) goes."""
    for folder in (output, *(output / name for name in folders)):
        for path in (folder, *folder.parents):
            if path.is_symlink() and not path.exists():
                raise UserError(f"{path}: {describe(path)}; choose another output or remove "
                                "the link")
            if path.exists() and not path.is_dir():
                raise UserError(
                    f"{path}: is a file, not a folder; choose another output or move the file"
                )
    existing = next(path for path in (output, *output.absolute().parents) if path.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{existing}: cannot be written to (read-only, or not yours); choose "
                        "another output")


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically, as UTF-8; a file name that is not UTF-8 (Python holds its
    bytes as surrogates) is written as the bytes it has on disk."""
    with replacing(path) as temporary:
        temporary.write_text(text, encoding="utf-8", errors="surrogateescape")


def write_json(path: Path, data) -> None:
    """Write a JSON file atomically (NaN and infinities written as null)."""
    write_text(path, json_text(data))


def json_text(data) -> str:
    """`data` as indented JSON text, NaN and infinities as null."""
    return json.dumps(_finite_or_none(data), indent=2) + "\n"


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value


def refuse_overwriting(
    folder: Path, names: Sequence[str], overwrite: bool, owned: Collection[Path] = ()
) -> None:
    """Refuse, before any work, to replace files already in `folder` under `names` (paths
    relative to it) unless `overwrite` or they are `owned` (this tool wrote them): they may be
    a user's own. A folder or a special file where a file goes is refused even so, and so is a
    `folder` that cannot be one or cannot be written (`check_output_folder`)."""
    check_output_folder(folder)
    refuse_non_files([folder / name for name in names], "move it, or choose another --output")
    if overwrite:
        return
    found = [name for name in names if (folder / name).exists() and folder / name not in owned]
    if found:
        raise UserError(
            f"{folder}: already holds {listing(found)}; pass --overwrite to replace "
            f"{'it' if len(found) == 1 else 'them'}, or choose another --output"
        )


def check_new_file(path: Path, overwrite: bool, reading: Path, role: str, option: str) -> None:
    """Refuse, before any work, to write the file `path` (given with `option`) where a folder
    or special file stands, where it is `reading` (the `role` the command reads: never
    replaced, --overwrite or not), or where it exists and not `overwrite`."""
    refuse_non_files([path], f"give {option} a file name")
    check_output_folder(path.parent)
    if path.exists() and reading.exists() and os.path.samefile(path, reading):
        raise UserError(f"{path}: is the {role}; give another {option}")
    if path.exists() and not overwrite:
        raise UserError(f"{path}: already exists; pass --overwrite to replace it")


def refuse_non_files(paths: Iterable[Path], hint: str) -> None:
    """Refuse a folder or special file (a pipe, say) standing where one of `paths`, files about
    to be written, goes: replacing it would fail, or lose what it holds."""
    for path in paths:
        if path.exists() and not path.is_file():
            raise UserError(f"{path}: {describe(path)} where a file goes; {hint}")


def describe(path: Path) -> str:
    """What stands at `path`, for messages: "is a file", "is a folder", "is a special file
    (device, pipe or socket)", "is a symbolic link to nothing (...)" or "not found"."""
    if path.is_file():
        return "is a file"
    if path.is_dir():
        return "is a folder"
    if path.exists():
        return "is a special file (device, pipe or socket)"
    if path.is_symlink():
        return "is a symbolic link to nothing (a loop, or its target is gone)"
    return "not found"


def read_bytes(path: Path, hint: str, limit: int | None = None) -> bytes:
    """The bytes of the regular file `path`, refused (with `hint`, what to do) before reading
    where it is missing, a folder, a special file (reading a pipe may never end) or larger
    than `limit` bytes."""
    if not path.is_file():
        raise UserError(f"{path}: {describe(path)}; {hint}")
    check_size(str(path), path.stat().st_size, limit, hint)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {first_line(exc)}") from None


def decode_text(path: Path, raw: bytes) -> str:
    """A text file's bytes as text: UTF-8, or UTF-32, UTF-16 or UTF-8 after a byte-order mark
    (what Windows editors and PowerShell write); anything else is refused, naming `path`."""
    boms = {"utf-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE),  # before UTF-16: ff fe 00 00
            "utf-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)}
    encoding = next((name for name, marks in boms.items() if raw.startswith(marks)), "utf-8-sig")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        shown = "UTF-8" if encoding == "utf-8-sig" else encoding.upper()
        raise UserError(f"{path}: not {shown} text ({exc.reason} at byte {exc.start}); save it "
                        "as UTF-8") from None


def check_size(where: str, size: int, limit: int | None, hint: str) -> None:
    """Refuse, before reading it, a file of `size` bytes larger than `limit` (where given)."""
    if limit is not None and size > limit:
        raise UserError(f"{where}: {size} bytes, more than the {limit} such a file may have; "
                        f"{hint}")
