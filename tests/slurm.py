"""A single-node SLURM cluster for the tests: munged, slurmctld and slurmd in one temporary folder.

Everything the cluster writes is in that folder (``slurm.conf``, the munge key and socket, the
controller's state, slurmd's spool, pid files and logs) and the daemons listen on free ports of
127.0.0.1, so two test runs on one machine never meet. The daemons run in the foreground as
children of the test process; :meth:`SlurmCluster.stop` cancels the cluster's jobs, then stops
each daemon by its pid, every step bounded in time.

Needs the Debian packages of :data:`APT_PACKAGES` (root runs the daemons: ``SlurmUser=root``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["APT_PACKAGES", "SlurmCluster", "SlurmStartError", "missing_binaries", "slurm_cluster"]

#: What provides the binaries (``apt-get install -y slurmctld slurmd slurm-client munge``).
APT_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")

#: binary -> Debian package
BINARIES = {
    "munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client",
    "sinfo": "slurm-client", "squeue": "slurm-client", "scancel": "slurm-client",
    "scontrol": "slurm-client",
}

NODE = "localhost"
PARTITION = "debug"
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
_SOCKET_MAX = 100  # AF_UNIX paths are at most 107 bytes


class SlurmStartError(RuntimeError):
    """The cluster did not come up; the message holds the daemons' log tails."""


def which(name: str) -> str | None:
    """``name`` on PATH or in the sbin folders (daemons live in /usr/sbin)."""
    return shutil.which(name, path=_SEARCH_PATH)


def missing_binaries() -> list[str]:
    """The binaries of :data:`BINARIES` that are not installed."""
    return [b for b in BINARIES if which(b) is None]


def install_hint() -> str:
    """One line that names what is missing and the apt command that installs it."""
    missing = missing_binaries()
    packages = sorted({BINARIES[b] for b in missing})
    return (f"SLURM test cluster: {', '.join(missing)} not found (Debian packages "
            f"{', '.join(packages)}); install with `apt-get install -y {' '.join(APT_PACKAGES)}`")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_hardware() -> str:
    """``CPUs=.. Boards=.. ... RealMemory=..`` of this machine (``slurmd -C``)."""
    out = subprocess.run([which("slurmd") or "slurmd", "-C"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    first = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
    return " ".join(w for w in first.split() if not w.startswith("NodeName="))


def slurm_conf(root: Path, socket_path: Path, ports: tuple[int, int], hardware: str) -> str:
    """The text of a minimal single-node ``slurm.conf`` whose files all live in ``root``."""
    ctld_port, slurmd_port = ports
    return f"""\
# single-node test cluster (tests/slurm.py); every path is in {root}
ClusterName=meitest
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
KillWait=5
MinJobAge=3600
InactiveLimit=0
NodeName={NODE} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"--- {path.name}: (none)"
    return f"--- {path.name} (last {min(lines, len(text))} lines)\n" + "\n".join(text[-lines:])


def _environ_has(pid: int, entry: bytes) -> bool:
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


@dataclass
class SlurmCluster:
    """A running single-node cluster (see :func:`slurm_cluster`).

    Attributes
    ----------
    root : Path
        Its folder (config, state, logs).
    conf : Path
        Its ``slurm.conf``; clients find it through ``SLURM_CONF`` (:attr:`env`).
    partition : str
        The default (and only) partition.
    """

    root: Path
    conf: Path
    socket_path: Path
    partition: str = PARTITION
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    started_s: float = 0.0
    _socket_dir: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` with ``SLURM_CONF`` pointing at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, timeout: float = 30, check: bool = True
            ) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster (bounded by ``timeout``)."""
        return subprocess.run([which(args[0]) or args[0], *args[1:]], env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=check)

    def node_state(self) -> str:
        """The node's state as sinfo prints it (``idle``, ``alloc``, ``down*``, ...)."""
        out = self.run("sinfo", "-h", "-N", "-n", NODE, "-o", "%t", timeout=15, check=False)
        return out.stdout.strip() if out.returncode == 0 else f"(sinfo: {out.stderr.strip()})"

    def job_state(self, job_id: str) -> str:
        """``JobState`` of a job (scontrol knows finished jobs for an hour: MinJobAge)."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id), timeout=15, check=False)
        for word in out.stdout.split():
            if word.startswith("JobState="):
                return word.partition("=")[2]
        return "UNKNOWN"

    def wait_job(self, job_id: str, timeout: float = 60) -> str:
        """Wait until a job has ended; its final state (raises TimeoutError past ``timeout``)."""
        deadline = time.monotonic() + timeout
        running = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "UNKNOWN"}
        while True:
            state = self.job_state(job_id)
            if state not in running:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state} after {timeout} s\n"
                                   + self.log_tails())
            time.sleep(0.5)

    def all_jobs(self) -> list[str]:
        """Ids of every job the controller knows, finished ones included (MinJobAge=3600)."""
        out = self.run("scontrol", "-o", "show", "jobs", timeout=15, check=False)
        return [w.partition("=")[2] for w in out.stdout.split() if w.startswith("JobId=")]

    def jobs(self) -> list[str]:
        """Ids of the jobs the controller still runs or queues."""
        out = self.run("squeue", "-h", "-o", "%i", timeout=15, check=False)
        return out.stdout.split() if out.returncode == 0 else []

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every daemon's log and stderr."""
        names = ("munged.log", "munged.stderr", "slurmctld.log", "slurmctld.stderr",
                 "slurmd.log", "slurmd.stderr")
        return "\n".join(_tail(self.root / n, lines) for n in names)

    def _dead(self) -> list[str]:
        return [f"{n} exited with {p.returncode}" for n, p in self.procs.items()
                if p.poll() is not None]

    def _start_daemon(self, name: str, *args: str) -> None:
        err = open(self.root / f"{name}.stderr", "wb")  # the child keeps its own copy
        try:
            self.procs[name] = subprocess.Popen(
                [which(name) or name, *args], env=self.env, stdin=subprocess.DEVNULL,
                stdout=err, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            err.close()

    def start(self, timeout: float = 60) -> SlurmCluster:
        """Start munged, slurmctld, slurmd; return once sinfo shows the node idle.

        Raises
        ------
        SlurmStartError
            A daemon exited or the node is not idle within ``timeout``; the daemons started
            are stopped and the message holds their log tails.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            self._start_daemon(
                "munged", "--foreground", "--force", f"--key-file={self.root / 'munge.key'}",
                f"--socket={self.socket_path}", f"--log-file={self.root / 'munged.log'}",
                f"--pid-file={self.root / 'munged.pid'}",
                f"--seed-file={self.root / 'munged.seed'}", "--num-threads=2")
            while not self.socket_path.exists():
                if self._dead() or time.monotonic() > deadline:
                    raise SlurmStartError("munged did not create its socket")
                time.sleep(0.05)
            self._start_daemon("slurmctld", "-D", "-i", "-f", str(self.conf))
            self._start_daemon("slurmd", "-D", "-f", str(self.conf), "-N", NODE)
            state = ""
            while True:
                if self._dead():
                    raise SlurmStartError("; ".join(self._dead()))
                state = self.node_state()
                if state == "idle":
                    break
                if time.monotonic() > deadline:
                    raise SlurmStartError(f"node {NODE} is {state!r}, not idle, after "
                                          f"{timeout} s")
                time.sleep(0.25)
        except (SlurmStartError, OSError, subprocess.SubprocessError) as exc:
            tails = self.log_tails()
            self.stop()
            raise SlurmStartError(f"SLURM test cluster in {self.root} did not start: {exc}\n"
                                  f"{tails}") from None
        self.started_s = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 30) -> None:
        """Cancel the jobs, stop slurmd, slurmctld and munged (by pid), reap leftovers.

        Bounded: each daemon gets SIGTERM, then SIGKILL after a few seconds; the whole stop
        takes at most about ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        ctld = self.procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                ids = self.jobs()
                if ids:
                    self.run("scancel", *ids, timeout=15, check=False)
                    while self.jobs() and time.monotonic() < deadline - 15:
                        time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=max(1.0, min(5.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._reap_leftovers()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _reap_leftovers(self) -> None:
        """Kill what the cluster started and left behind (slurmstepd, job processes).

        They are found by ``SLURM_CONF=<this cluster's conf>`` in their environment: only this
        cluster's daemons and jobs have it (never this process or its parents).
        """
        entry = f"SLURM_CONF={self.conf}".encode()
        mine = _ancestors()
        left = [int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and int(p.name) not in mine and _environ_has(int(p.name),
                                                                                  entry)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            end = time.monotonic() + 5
            while time.monotonic() < end:
                left = [pid for pid in left if Path(f"/proc/{pid}").exists()
                        and _environ_has(pid, entry)]
                if not left:
                    return
                time.sleep(0.1)


def _munge_key(path: Path) -> None:
    mungekey = which("mungekey")
    if mungekey:
        subprocess.run([mungekey, "--create", f"--keyfile={path}"], check=True,
                       capture_output=True, timeout=30)
    else:  # munge < 0.5.14 has only create-munge-key, which writes /etc/munge/munge.key
        path.write_bytes(os.urandom(128))
    path.chmod(0o600)


def make_cluster(root: Path) -> SlurmCluster:
    """Write the config, munge key and folders of a cluster in ``root`` (nothing started)."""
    root = Path(root).absolute()
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    socket_path, socket_dir = root / "munge.sock", None
    if len(str(socket_path)) > _SOCKET_MAX:
        socket_dir = Path(tempfile.mkdtemp(prefix="munge-"))
        socket_path = socket_dir / "munge.sock"
    _munge_key(root / "munge.key")
    (root / "plugstack.conf").write_text("")
    conf = root / "slurm.conf"
    ports = _free_ports(2)
    conf.write_text(slurm_conf(root, socket_path, (ports[0], ports[1]), node_hardware()))
    return SlurmCluster(root=root, conf=conf, socket_path=socket_path, _socket_dir=socket_dir)


@contextlib.contextmanager
def slurm_cluster(root: Path, timeout: float = 60) -> Iterator[SlurmCluster]:
    """A started single-node cluster in ``root``; stopped (every daemon) on exit.

    Raises
    ------
    SlurmStartError
        The binaries are missing (the message names the apt packages) or the cluster did not
        come up within ``timeout`` (the message holds the daemons' log tails).
    """
    if missing_binaries():
        raise SlurmStartError(install_hint())
    cluster = make_cluster(root).start(timeout=timeout)
    try:
        yield cluster
    finally:
        cluster.stop()
