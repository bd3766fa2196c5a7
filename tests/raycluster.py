"""A real Ray cluster of several raylets on this one machine, for tests.

Each node is a `ray start ... --block` process started in a session of its own. Killing that
session's processes (SIGKILL) takes its raylet, GCS (head), agents and workers with it and
touches no other Ray instance on the machine (`ray stop --force` would kill every one). Its
process group alone is not enough: Ray's workers move to process groups of their own (they
keep the session).

Authentication: Ray 2.60 clusters run with token auth. Every `ray start` and every client
gets `RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN_PATH` naming a token file of this cluster's
own (in its temp folder), so the user's ~/.ray/auth_token is neither read nor written.
Pass `cluster.env` to every process that talks to the cluster.

    with RayCluster() as cluster:
        cluster.add_node("head", cpus=1, head=True)
        cluster.add_node("worker", cpus=1)
        ids = cluster.wait_for_nodes()      # {"head": node id hex, "worker": ...}
        subprocess.run([..., "--address", cluster.address], env=cluster.env)
        cluster.kill("worker")              # a node lost: SIGKILL, no goodbye
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# A dead node is noticed after period x threshold: ~1.5 s here instead of Ray's ~15 s.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
OBJECT_STORE_BYTES = 200 * 1024**2  # per node; Ray's default is 30% of RAM per raylet


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's choice; a race is possible but unlikely)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """One raylet: its `ray start --block` process (leader of the node's session), its log;
    it has a custom resource {name: 1}."""

    name: str
    proc: subprocess.Popen
    log: Path
    dead: bool = False  # killed, every process of its session gone


class RayCluster:
    """Raylets on this machine, one `ray start --block` each; a context manager that always
    tears down the sessions it started, and only those."""

    def __init__(self, root: Path | None = None, health_checks: dict[str, str] | None = None,
                 python: str | Path = sys.executable):
        # short: Ray's Unix sockets live under the temp dir and a socket path has 107 chars
        self.root = Path(root or tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self._own_root = root is None
        self.temp_dir = self.root / "r"
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))  # Ray's own format: 256 random bits, hex
        token.chmod(0o600)
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}  # RAY_AUTH_TOKEN would win
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_USAGE_STATS_ENABLED": "0"})
        env.update(FAST_HEALTH_CHECKS if health_checks is None else health_checks)
        self.env = env
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, Node] = {}
        self.head: str | None = None
        self.python = str(python)  # whose Ray runs the nodes: another venv's, for another Ray

    # -- starting -------------------------------------------------------------------------

    def add_node(self, name: str, cpus: int, head: bool = False) -> Node:
        """Start a raylet with `cpus` CPUs and a custom resource {name: 1} that tells it
        apart (placement and tests); the head also runs the GCS."""
        if head and self.head:
            raise ValueError(f"the cluster has a head already: {self.head}")
        log = self.root / f"{name}.log"
        cmd = [self.python, "-m", "ray.scripts.scripts", "start", "--block",
               f"--num-cpus={cpus}", "--num-gpus=0",
               f"--resources={json.dumps({name: 1})}",
               f"--object-store-memory={OBJECT_STORE_BYTES}",
               f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--node-manager-port={free_port()}",
               f"--object-manager-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}"]
        if head:
            cmd[4:4] = ["--head"]
            cmd += [f"--port={self.port}", "--include-dashboard=false"]
        else:
            cmd += [f"--address={self.address}"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node = self.nodes[name] = Node(name, proc, log)
        if head:
            self.head = name
            self._wait_for_head(node)
        return node

    def _wait_for_head(self, node: Node, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray start --head exited {node.proc.returncode}:\n"
                                   + node.log.read_text()[-3000:])
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"the head's GCS did not listen on {self.port} in {timeout} s:\n"
                           + node.log.read_text()[-3000:])

    def wait_for_nodes(self, timeout: float = 90) -> dict[str, str]:
        """Wait until every node started is alive in the GCS; {name: node id (hex)}.

        Asks from a child process (a Ray client with this cluster's env) so the test process
        itself never connects to Ray."""
        script = textwrap.dedent("""
            import json, sys, time
            import ray
            names, deadline = json.loads(sys.argv[1]), time.time() + float(sys.argv[2])
            ray.init(address=sys.argv[3], log_to_driver=False, logging_level="ERROR")
            while True:
                found = {r: n["NodeID"] for n in ray.nodes() if n["Alive"]
                         for r in n["Resources"] if r in names}
                if len(found) == len(names) or time.time() > deadline:
                    break
                time.sleep(0.5)
            print(json.dumps(found))
        """)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            child = subprocess.Popen([sys.executable, "-c", script, json.dumps(list(self.nodes)),
                                      str(timeout), self.address], env=self.env, stdout=out,
                                     stderr=err, stdin=subprocess.DEVNULL)
            try:
                while child.poll() is None:  # a node that died while starting fails at once
                    for node in self.nodes.values():
                        if node.proc.poll() is not None:
                            raise RuntimeError(f"node {node.name} exited "
                                               f"{node.proc.returncode}:\n"
                                               + node.log.read_text()[-3000:])
                    time.sleep(0.2)
            finally:
                if child.poll() is None:
                    child.kill()
                child.wait()
            out.seek(0), err.seek(0)
            stdout, stderr = out.read(), err.read()
        if child.returncode != 0:
            raise RuntimeError(f"could not list the cluster's nodes:\n{stderr[-3000:]}")
        found = json.loads(stdout.strip().splitlines()[-1])
        missing = set(self.nodes) - set(found)
        if missing:
            logs = "\n".join(f"--- {n}:\n{self.nodes[n].log.read_text()[-2000:]}"
                             for n in missing)
            raise TimeoutError(f"nodes {sorted(missing)} not alive after {timeout} s\n{logs}")
        return found

    # -- stopping -------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL every process of node `name`: its raylet, agents and workers (its session),
        as a machine that loses power would."""
        self._kill(self.nodes[name])

    def _kill(self, node: Node) -> None:
        if node.dead:  # its session id may name someone else's processes by now
            return
        # the group only while `ray start` is unreaped (its pid cannot be anyone else's)
        kill_session(node.proc.pid, group=node.proc.returncode is None)
        try:
            node.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            return
        node.dead = True

    def shutdown(self) -> None:
        """Kill every node (workers first, the head last) and remove the temp folder."""
        for name in sorted(self.nodes, key=lambda n: n == self.head):
            self._kill(self.nodes[name])
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "RayCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def session_pids(sid: int) -> list[int]:
    """Live processes in session `sid`. Ray's workers move to process groups of their own, but
    they stay in the session of the `ray start` that started their raylet."""
    return [pid for pid, fields in live_processes() if int(fields[3]) == sid]


def live_processes() -> Iterator[tuple[int, list[str]]]:
    """Each live process: its pid and the fields of /proc/PID/stat after its name (state ppid
    pgrp session ...). A zombie is dead already and left out."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            yield int(entry), fields


def kill_session(sid: int, group: bool = True) -> None:
    """SIGKILL the process group `sid` (the `ray start`, its raylet, GCS, agents), then every
    process left in session `sid` (the workers, in groups of their own)."""
    for _ in range(50):
        if group:
            try:
                os.killpg(sid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left = [p for p in session_pids(sid) if p != sid]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
