"""Sessions: tests (the README's test command), lint. `nox -s tests` installs everything itself."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints.txt")  # torch==2.13.0: the CPU wheel on this machine's disk


@nox.session
def tests(session: nox.Session) -> None:
    """Install the package with test extras (torch pinned) and run pytest."""
    session.install(*CONSTRAINTS, "-e", ".[test]")
    args = session.posargs or ["-m", "not allen"]
    session.run("pytest", *args, env={"MPLBACKEND": "Agg"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, tests and benchmarks."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "meireport", "tests", "noxfile.py")
