"""Test sessions: the suite once per Keras backend, the cross-backend parity checks, and lint.

`nox` runs them all (what CI runs); `nox -s "tests(backend='jax')"` runs one backend.
"""

import nox

BACKENDS = ["tensorflow", "jax", "torch"]
CONSTRAINTS = ".ci/constraints-cpu.txt"

nox.options.sessions = ["lint", "tests", "parity"]
nox.options.error_on_missing_interpreters = True


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """The whole suite but the parity tests, with only `backend` installed."""
    session.install("-c", CONSTRAINTS, f".[{backend},test]")
    session.run("pytest", "-m", "not parity", *session.posargs, env={"KERAS_BACKEND": backend})


@nox.session
def parity(session: nox.Session) -> None:
    """All three backends installed: same outputs, models portable between backends."""
    session.install("-c", CONSTRAINTS, ".[all,test]")
    session.run("pytest", "-m", "parity", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
