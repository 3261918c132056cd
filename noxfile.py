"""Sessions: tests (the README's test command), lint, wheel (the installed package end to end).

`nox -s tests` installs everything itself.
"""

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
    # `allen` tests need AllenSDK's env (`nox -s allen`); `wheel` tests have `nox -s wheel`
    args = session.posargs or [
        "-m", "not allen and not wheel and not slurm and not gpu and not scale and not rich"]
    session.run("pytest", *args, env={"MPLBACKEND": "Agg"})


@nox.session
def scale(session: nox.Session) -> None:
    """The full-scale simulated session: written once (~30 s, ~1.1 GB), then read and checked.

    tests/test_fullscale.py: its shape (units, areas, every Brain Observatory 1.1 table and its
    counts, spikes, duration, the unused dataset), our reader's counts against h5py, the ground
    truth in the counts, ``meireport simulate --scale full`` and ``source.scale: full``.
    """
    session.install(*CONSTRAINTS, "-e", ".[test]")
    session.run("pytest", "-m", "scale", "tests/test_fullscale.py", *session.posargs,
                env={"MPLBACKEND": "Agg"})


@nox.session
def wheel(session: nox.Session) -> None:
    """Build the wheel, install it (no -e) into a fresh venv, run the tiny report outside the repo.

    Only pytest is installed here (the test builds its own venv), so the file runs with
    --noconftest; tests/test_wheel.py uses nothing but the standard library and pytest. A passing
    run removes its temporary folder (the venv is large); a failing one keeps it, with the logs.
    """
    session.install(*CONSTRAINTS, "pytest>=7.4")
    session.run(
        "pytest", "-m", "wheel", "--noconftest", "-s", "-o", "tmp_path_retention_policy=failed",
        "tests/test_wheel.py", *session.posargs,
    )


@nox.session
def slurm(session: nox.Session) -> None:
    """The report's tasks on a real single-node SLURM cluster (tests/test_slurm.py).

    The test starts munged, slurmctld and slurmd itself (as root, in a temporary folder) and
    stops them; it needs the Debian packages slurmctld, slurmd, slurm-client and munge (`.ci/run`
    installs them) and fails, never skips, without them.
    """
    session.install(*CONSTRAINTS, "-e", ".[test]")
    session.run("pytest", "-m", "slurm", "tests/test_slurm.py", *session.posargs,
                env={"MPLBACKEND": "Agg"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff; import-linter's layer / no-cycle contracts; no module uses another's private names.

    import-linter reads the package's source without importing it (no install needed); its
    contracts are ``[tool.importlinter]`` in pyproject.toml.
    """
    session.install("ruff>=0.5", "import-linter>=2.3", "pytest>=7.4")
    session.run("ruff", "check", "meireport", "tests", "bench", "noxfile.py")
    session.run("lint-imports")
    # stdlib-only checks of the layout (private names across modules); the rest of the file
    # needs the package and runs in `nox -s tests`
    session.run("pytest", "-q", "--noconftest", "-p", "no:cacheprovider", "-o", "addopts=",
                "tests/test_architecture.py", "-k", "private")


@nox.session
def book(session: nox.Session) -> None:
    """The README's main job: simulate the default session, run every notebook, build the site."""
    session.install(*CONSTRAINTS, "-e", ".")
    params = session.posargs[0] if session.posargs else "params/default.yaml"
    session.run("meireport", "report", params, env={"MPLBACKEND": "Agg"})


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests): writes bench/results.json and bench/results.md (+ PNG plots).

    Every figure is a ratio against a baseline run alongside (AllenSDK's reader in `nox -s allen`'s
    env, the seed notebook's code, neuralpredictors) or a cost-vs-size curve. Extra arguments go
    to bench/run_all.py, e.g. `nox -s bench -- --only spikes,oracle` or `-- --quick`.
    """
    import sys
    import time
    from pathlib import Path

    started = time.time()
    session.install(*CONSTRAINTS, "-e", ".")
    if not Path(".nox/allen/bin/python").is_file():
        # AllenSDK's own env for the side-by-side spike counts (about 2 min); without it the
        # AllenSDK figures are recorded as not measured
        try:
            session.run(sys.executable, "-m", "nox", "-s", "allen", "--install-only",
                        external=True)
        except nox.command.CommandFailed:
            session.warn("could not build the allen env; AllenSDK figures will be missing")
    session.run("python", "-m", "bench.run_all", "--started-at", str(started), *session.posargs,
                env={"MPLBACKEND": "Agg"})


# AllenSDK 2.16.2 pins numpy<1.24 and pandas==1.5.3: it gets its own env and never enters the core
# one. pynwb/hdmf are pinned below 3/4 (allensdk cannot read NWB written by pynwb >= 3.1; without
# the hdmf floor pip lands one that cannot create NWB files); scikit-image < 0.25 is the last
# series with cp311 wheels that accept numpy 1.23. The project goes in with --no-deps, so only the
# modules that need numpy/pynwb/h5py are imported here (no torch, no rastermap).
ALLEN_REQUIREMENTS = (
    "allensdk==2.16.2",
    "pynwb>=2.8,<3",
    "hdmf>=3.14.5,<4",
    "numpy<1.24",
    "pandas==1.5.3",
    "h5py>=3.8",
    "tifffile>=2023.1",
    "scikit-image>=0.22,<0.25",
    "tqdm>=4.60",
    "pytest>=7.4",
)


@nox.session
def allen(session: nox.Session) -> None:
    """AllenSDK's own env: parity of our reader with EcephysSession, and `meireport fetch`."""
    session.install(*ALLEN_REQUIREMENTS)
    session.install("--no-deps", "-e", ".")
    # An explicit path: pyproject's testpaths + --doctest-modules would import torch-based modules.
    # Extra pytest arguments go after `--`, e.g. `nox -s allen -- -k counts`.
    session.run(
        "pytest",
        "-m",
        "allen",
        "tests/test_allen_parity.py",
        *session.posargs,
        env={"MPLBACKEND": "Agg"},
    )


@nox.session
def gpu(session: nox.Session) -> None:
    """CUDA against CPU (training, MEI, Gabor search): fails where torch sees no GPU.

    Not run by CI (no GPU here); run it on a GPU machine with a CUDA build of torch.
    """
    session.install(*CONSTRAINTS, "-e", ".[test]")
    session.run("pytest", "-m", "gpu", *session.posargs, env={"MPLBACKEND": "Agg"})
