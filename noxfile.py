"""Test sessions: the tests that need no backend once (with none installed), the rest of the suite
once per Keras backend, the cross-backend parity checks, and lint.

`nox` runs them all (what CI runs); `nox -s "tests(backend='jax')"` runs one backend and
`nox -s tests_no_backend` the backend-free tests. Which test modules need no backend is listed in
tests/conftest.py (NO_BACKEND_MODULES); their tests carry the `no_backend` marker.
"""

import nox

BACKENDS = ["tensorflow", "jax", "torch"]
ONCE_ON = "tensorflow"  # the backend session that runs the `once` tests
CONSTRAINTS = ".ci/constraints-cpu.txt"
# pytest-xdist: one worker per CPU core, each test module whole on one worker (module fixtures
# such as the parity outputs are built once). Much of a test's time is single-threaded: Python
# starting `flexunet` subprocesses, importing a backend, compiling a model.
PARALLEL = ("-n", "auto", "--dist", "loadfile")

nox.options.sessions = ["lint", "tests_no_backend", "tests", "parity"]
nox.options.error_on_missing_interpreters = True


@nox.session
def tests_no_backend(session: nox.Session) -> None:
    """The `no_backend` tests (config, CLI input checks, file handling, data preparation, numpy
    scores), once, with keras but no backend installed: whatever imports keras fails here;
    on one pytest-xdist worker per CPU core."""
    session.install("-c", CONSTRAINTS, ".[test]")
    session.run("pytest", "-m", "no_backend", *PARALLEL, *session.posargs)


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """The suite but the parity and `no_backend` tests (and, but on TensorFlow, the `once`
    tests), with only `backend` installed, on one pytest-xdist worker per CPU core."""
    session.install("-c", CONSTRAINTS, f".[{backend},test]")
    selected = "not parity and not no_backend" + (" and not once" if backend != ONCE_ON else "")
    session.run("pytest", "-m", selected, *PARALLEL, *session.posargs,
                env={"KERAS_BACKEND": backend})


@nox.session
def parity(session: nox.Session) -> None:
    """All three backends installed: same outputs, models portable between backends (the two
    parity modules side by side on pytest-xdist workers)."""
    session.install("-c", CONSTRAINTS, ".[all,test]")
    session.run("pytest", "-m", "parity", *PARALLEL, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
