"""A real one-node Slurm on this machine, for tests.

munged, slurmctld and slurmd run as root from a temporary folder, with a slurm.conf for this
host alone: no cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), no accounting,
munge on a socket of its own and Slurm on free ports, so no other Slurm or munge on the machine
is touched. Each daemon runs in a session of its own and is killed with it at the end, after
the jobs submitted here are cancelled.

    with SlurmCluster() as slurm:
        job = slurm.sbatch(["--time=1", "job.sh"], cwd=folder, env=env)
        slurm.wait(job)                      # "COMPLETED", "TIMEOUT", ...
        slurm.job_processes(job)             # what of the job still runs: nothing, one hopes

Needs root and Debian's slurm-wlm and munge (.ci/run installs them); `unavailable()` says why
not when they are missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from raycluster import free_port, kill_session, live_processes

DAEMONS = ("munged", "slurmctld", "slurmd")
ENDED = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "PREEMPTED",
         "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def unavailable() -> str | None:
    """Why a test Slurm cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the test Slurm runs its daemons as root"
    missing = [t for t in (*DAEMONS, "sbatch", "scontrol", "scancel", "sinfo")
               if not shutil.which(t)]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)"
    return None


class SlurmCluster:
    """munged, slurmctld and slurmd for this host, started in a temporary folder; a context
    manager that cancels its jobs and stops its daemons, and only those."""

    def __init__(self):
        # short: munge's socket path, like any Unix socket's, has at most 107 characters
        self.root = Path(tempfile.mkdtemp(prefix="sl-", dir="/tmp"))
        self.root.chmod(0o755)  # munge's socket must be reachable
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.daemons: dict[str, subprocess.Popen] = {}
        self.jobs: list[int] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._write_config()
        self._start()

    # -- starting -------------------------------------------------------------------------

    def _write_config(self) -> None:
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir()
        keys = self.root / "munge"
        keys.mkdir(mode=0o700)
        key = keys / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        memory_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
        r = self.root
        self.conf.write_text(f"""\
ClusterName=hpotest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={r}/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
# seconds between a job's SIGTERM and its SIGKILL (Slurm's default is 30)
KillWait=10
# keep ended jobs' records for scontrol
MinJobAge=3600
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb * 8 // 10}
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _start(self) -> None:
        r = self.root
        self._daemon("munged", ["munged", "-F", "-f", f"--socket={r}/munge.socket",
                                f"--key-file={r}/munge/munge.key",
                                f"--pid-file={r}/munged.pid", f"--seed-file={r}/munged.seed",
                                f"--log-file={r}/log/munged.log"])
        self._wait(lambda: (r / "munge.socket").exists(), "munged's socket")
        self._daemon("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._daemon("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node])
        self._wait(lambda: self._run(["sinfo", "-h", "-o", "%T"]).strip() == "idle",
                   f"node {self.node} idle")

    def _daemon(self, name: str, cmd: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.out", "wb")
        self.daemons[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=self.env,
                                              start_new_session=True)
        out.close()

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [n for n, p in self.daemons.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}\n"
                                   + self.logs())
            try:
                if ready():
                    return
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"no {what} after {timeout} s\n{self.logs()}")

    def logs(self) -> str:
        """The tail of every daemon's log, for a failure's message."""
        return "\n".join(f"--- {f.name}:\n{f.read_text(errors='replace')[-2000:]}"
                         for f in sorted((self.root / "log").iterdir()))

    # -- jobs -----------------------------------------------------------------------------

    def _run(self, cmd: list[str], **kwargs) -> str:
        return subprocess.run(cmd, env=kwargs.pop("env", self.env), capture_output=True,
                              text=True, check=True, timeout=60, **kwargs).stdout

    def sbatch(self, args: list[str], cwd: Path, env: dict[str, str]) -> int:
        """Submit `sbatch ARGS` from `cwd` with `env` (SLURM_CONF is set here); the job id."""
        out = self._run(["sbatch", "--parsable", *args], cwd=cwd,
                        env={**env, "SLURM_CONF": str(self.conf)})
        job = int(out.strip().split(";")[0])
        self.jobs.append(job)
        return job

    def state(self, job: int) -> str:
        """The job's state as Slurm says it: PENDING, RUNNING, COMPLETED, TIMEOUT, ..."""
        info = self._run(["scontrol", "-o", "show", "job", str(job)])
        return re.search(r"JobState=(\S+)", info).group(1)

    def wait(self, job: int, timeout: float = 900) -> str:
        """Wait until the job has ended and its processes are gone; its final state."""
        deadline = time.time() + timeout
        while (state := self.state(job)) not in ENDED:
            if time.time() > deadline:
                raise TimeoutError(f"job {job} still {state} after {timeout} s")
            time.sleep(1)
        return state

    def job_processes(self, job: int, grace: float = 30) -> list[str]:
        """Processes of `job` still alive after up to `grace` seconds: every process a job
        starts (Ray's, with their own sessions and names, included) inherits its SLURM_JOB_ID."""
        deadline = time.time() + grace
        while (left := _processes_with(f"SLURM_JOB_ID={job}")) and time.time() < deadline:
            time.sleep(0.5)
        return left

    # -- stopping -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Cancel this cluster's unfinished jobs, then kill its daemons and remove the folder."""
        running = [j for j in self.jobs if self.state(j) not in ENDED]
        if running:
            self._run(["scancel", *map(str, running)])
            for job in running:
                try:
                    self.wait(job, timeout=60)
                except TimeoutError:
                    pass
        for name in reversed(DAEMONS):  # slurmd first, munged last
            if name in self.daemons:
                kill_session(self.daemons[name].pid,
                             group=self.daemons[name].returncode is None)
                self.daemons[name].wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _processes_with(variable: str) -> list[str]:
    """'PID command' of each live process whose environment holds `variable` (NAME=value)."""
    found = []
    for pid, _ in live_processes():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if variable.encode() in environ:
            found.append(f"{pid} {command.decode(errors='replace')}")
    return found
