"""Where JAX keeps compiled programs between commands (flexunet_k3.backend): a folder per
jaxlib version and CPU kind in the user's cache folder, JAX's own variables obeyed. These set
the variables only: JAX is not needed (the parity session checks a command reusing them)."""

import os
from pathlib import Path

import pytest

from flexunet_k3 import backend

CACHE = "JAX_COMPILATION_CACHE_DIR"
THRESHOLD = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


@pytest.fixture
def environ(monkeypatch, tmp_path) -> dict:
    """A copy of the environment for the test, with no JAX cache variables and the user's
    cache folder in tmp_path/cache."""
    copy = {name: value for name, value in os.environ.items() if not name.startswith("JAX_")}
    copy["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    monkeypatch.setattr(os, "environ", copy)
    return copy


def test_compilations_are_kept_in_the_users_cache_folder(environ, tmp_path):
    backend._keep_jax_compilations()
    folder = Path(environ[CACHE])
    assert folder.is_dir() and folder.parent == tmp_path / "cache" / "flexunet-k3"
    assert folder.name.startswith("jax-")
    assert environ[THRESHOLD] == "0"  # an initializer compiles in about 0.1 s


def test_each_cpu_kind_and_jaxlib_gets_a_folder_of_its_own(environ, monkeypatch):
    def folder(flags: set[str], jaxlib: str) -> Path:
        monkeypatch.setattr(backend, "this_cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(backend.importlib.metadata, "version", lambda name: jaxlib)
        return backend.jax_cache_folder()

    avx2 = folder({"avx2", "fma"}, "0.10.2")
    assert avx2.name.startswith("jax-0.10.2-")
    assert folder({"fma", "avx2"}, "0.10.2") == avx2
    assert folder({"avx2", "fma", "avx512f"}, "0.10.2") != avx2
    assert folder({"avx2", "fma"}, "0.11.0") != avx2


def test_jax_s_own_variables_rule(environ, tmp_path):
    environ[CACHE] = str(tmp_path / "mine")
    backend._keep_jax_compilations()
    assert environ[CACHE] == str(tmp_path / "mine") and THRESHOLD not in environ
    del environ[CACHE]
    for value in ("false", "OFF", "0", "maybe"):  # JAX itself refuses "maybe", in one line
        environ["JAX_ENABLE_COMPILATION_CACHE"] = value
        backend._keep_jax_compilations()
        assert CACHE not in environ and not (tmp_path / "cache").exists()


def test_nothing_is_kept_where_the_folder_cannot_be_made(environ, tmp_path):
    (tmp_path / "cache").write_text("a file in the way")
    backend._keep_jax_compilations()
    assert CACHE not in environ and THRESHOLD not in environ
