"""A real Ray cluster of a few nodes on this machine, for the Ray tests and `benchmarks/ray_overhead.py`.

Every node is a `ray start` in its own session (so killing its raylet's process group is losing the
node) on a loopback address of its own (127.0.0.1 the head, 127.0.0.2 ...), with a custom resource
naming it (node_a, node_b ...). It must run inside a network namespace that has only loopback
(`unshare -n`, as root, then `ip link set lo up`): Ray otherwise binds and uses the machine's
interface address and probes a public resolver. `in_loopback_namespace` tells.

Nothing here uses `ray stop`, which stops every Ray process of the machine, other people's included:
`stop` kills exactly the processes whose command line names this cluster's temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
NODE_NAMES = "abcdefgh"


def in_loopback_namespace() -> bool:
    """True when the only network interface is loopback (inside `unshare -n`)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]  # (/sys/class/net shows the mounter's namespace)


def ray_bin() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if found is None:
        raise RuntimeError("the `ray` command is not installed (pip install 'llama-tui[ray]')")
    return found


class LocalRayCluster:
    def __init__(self, nodes: int = 3, cpus: int = 2, port: int = 6390, hide: dict[int, Path] | None = None) -> None:
        """`hide`: node number -> a directory that node must not see (an empty tmpfs over it, in a mount
        namespace of its own): a node without the model."""
        self.nodes = nodes
        self.cpus = cpus
        self.port = port
        self.hide = hide or {}
        self.temp_dir = Path(tempfile.mkdtemp(prefix="lt-ray-", dir="/tmp"))  # short: Ray's socket paths
        self.ips = [f"127.0.0.{n + 1}" for n in range(nodes)]
        self.leaders: dict[str, int] = {}  # node ip -> pid of its `ray start` session leader
        self.log = self.temp_dir / "ray-start.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        # A lost node is declared dead after 5 missed 1 s health checks (Ray's default: about 15 s).
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO),
               "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
        env.pop("RAY_ADDRESS", None)
        return env

    def _start_node(self, n: int) -> None:
        ip = self.ips[n]
        resources = json.dumps({f"node_{NODE_NAMES[n]}": 1})
        cmd = [ray_bin(), "start", "--node-ip-address", ip, "--num-cpus", str(self.cpus), "--resources", resources,
               "--disable-usage-stats"]
        if n == 0:
            cmd += ["--head", "--port", str(self.port), "--include-dashboard", "false", "--temp-dir",
                    str(self.temp_dir)]
        else:
            cmd += ["--address", self.address]
        if n in self.hide:
            hidden = shutil.which("sh") or "/bin/sh"
            inner = f'mount -t tmpfs none "{self.hide[n]}" && exec "$@"'
            cmd = ["unshare", "-m", "--propagation", "private", hidden, "-c", inner, "sh", *cmd]
        with open(self.log.with_suffix(f".{n}.log"), "ab") as f:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    env=self.env(), start_new_session=True)
        code = proc.wait(timeout=180)
        if code != 0:
            raise RuntimeError(f"`ray start` of node {ip} exited with {code}:\n"
                               f"{self.log.with_suffix(f'.{n}.log').read_text()[-3000:]}")
        self.leaders[ip] = proc.pid  # its daemons keep the session (and process group) id

    def start(self) -> "LocalRayCluster":
        """The head, then the other nodes one after another (joining together timed out on a busy machine)."""
        t0 = time.monotonic()
        for n in range(self.nodes):
            self._start_node(n)
        self.started_in = time.monotonic() - t0
        return self

    # ------------------------------------------------------------------------------------ processes

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster (raylets, GCS, agents, workers): their command lines name its temp dir."""
        mark = str(self.temp_dir)
        out = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if mark in " ".join(p.info["cmdline"] or ()):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def node_processes(self, ip: str) -> list[psutil.Process]:
        """The processes of node `ip`: its session, and the workers that name it."""
        sid = self.leaders[ip]
        out = []
        for p in self.processes():
            try:
                cmd = " ".join(p.cmdline())
                if os.getsid(p.pid) == sid or f"--node-ip-address={ip}" in cmd or f"--node_ip_address={ip}" in cmd:
                    out.append(p)
            except (psutil.Error, OSError):
                continue
        return out

    def kill_node(self, ip: str) -> int:
        """Lose node `ip`: SIGKILL its raylet's process group (the raylet and its agents). Its workers
        notice and exit on their own. Returns the group id."""
        raylet = next(p for p in self.processes()
                      if p.name() == "raylet" and f"--node_ip_address={ip}" in " ".join(p.cmdline()))
        pgid = os.getpgid(raylet.pid)
        os.killpg(pgid, signal.SIGKILL)
        return pgid

    def stop(self) -> None:
        """Kill every process of the cluster: those naming its temp dir, and those of its nodes' sessions
        (Ray's agents rewrite their command lines)."""
        sids = set(self.leaders.values())
        procs = self.processes()
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) in sids and p not in procs:
                    procs.append(p)
            except (OSError, psutil.Error):
                continue
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0
