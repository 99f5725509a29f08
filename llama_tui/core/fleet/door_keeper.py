"""The supervisor's NGINX: started (as its parent, through `frontdoor_nginx.FrontDoor`) once the instances
are ready, reloaded when membership or policy changes, started again with the last config that passed
`nginx -t` when it dies, and its access log followed into per-upstream statistics (`upstream.json`).

`DoorKeeper` works under the supervisor's lock (`sup.lock`) and keeps `sup.state.nginx` current.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llama_tui.core import paths
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import processes
from llama_tui.core.fleet import state as st_mod
from llama_tui.core.fleet.frontdoor import FrontDoorSpec
from llama_tui.core.fleet.frontdoor_nginx import FrontDoor
from llama_tui.core.fleet.instances import BACKOFF_BASE_S, BACKOFF_MAX_S, LOG_MAX_BYTES
from llama_tui.core.fleet.state import NginxState, log

if TYPE_CHECKING:
    from llama_tui.core.fleet.supervisor import Supervisor

ACCESS_LOG_MAX_BYTES = int(os.environ.get("LLAMA_TUI_ACCESS_LOG_MAX_BYTES", str(256 << 20)))


class DoorKeeper:
    """NGINX in front of the fleet's member instances, as long as the supervisor runs."""

    def __init__(self, sup: "Supervisor", nginx_bin: Path, prefix: Path) -> None:
        self.sup = sup
        self.door = FrontDoor(nginx_bin, prefix=prefix)
        self.wanted = False  # NGINX should run (it started once, or an adopted one runs)
        self.next_start = 0.0
        self.failures = 0
        self.follower: Any = None
        self.follower_error_logged = False
        self.totals: Any = None  # the follower's latest AccessTotals (frozen; the metrics listener reads it)

    @staticmethod
    def nginx_state(spec: Any, state_dir: Path) -> NginxState:
        prefix = state_dir / processes.NGINX_DIR
        return NginxState(port=spec.nginx_port, listen=spec.listen, policy=spec.policy,
                          prefix=str(prefix), config_path=str(prefix / "nginx.conf"),
                          error_log=str(prefix / "logs" / "error.log"), access_log=str(prefix / "logs" / "access.log"))

    @property
    def pid(self) -> int | None:
        return self.door.pid

    def spec(self) -> FrontDoorSpec:
        """NGINX in front of the instances that are in the upstream, with the current policy (the same
        builder `llama-tui nginx render` uses, so it prints exactly the live config)."""
        insts = self.sup.instances
        remote = insts.placement.starts_in_background  # a restarted remote instance comes back elsewhere
        members = [insts.endpoint(i) for i in insts.sorted() if i.rec.in_upstream and (i.handle or not remote)]
        return FrontDoorSpec.for_fleet(self.sup.spec, members, policy=self.sup.state.nginx.policy,  # type: ignore[union-attr]
                                       internal_key=self.sup.internal_key)

    def adopt(self, ref: processes.ProcRef) -> None:
        """Take over the NGINX an earlier supervisor started (`ref`: checked to be ours by the caller;
        FrontDoor checks it again, pid, start time and prefix, before every signal)."""
        self.door.adopt(ref.pid, self.spec(), started=ref.started)
        self.wanted = True
        log(f"adopted nginx (pid {ref.pid})")

    def record(self) -> None:
        ng = self.sup.state.nginx
        assert ng is not None
        pid = self.door.pid
        if pid != ng.pid:
            ng.pid = pid
            ng.pid_started = processes.process_start_time(pid) if pid else None

    def start(self) -> bool:
        ng = self.sup.state.nginx
        assert ng is not None
        if ng.pid:  # whatever is left of a killed master (its workers hold the port)
            processes.kill_group_remnants(ng.ref(self.sup.state.owner))
        spec = self.door.spec if self.door.spec is not None and self.door.spec.backends else self.spec()
        try:
            self.door.start(spec)
        except UserError as exc:
            self.failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** self.failures)
            self.next_start = time.monotonic() + delay
            ng.config_error = exc.cause
            log(f"nginx did not start: {exc.cause}; trying again in {delay:.1f}s")
            self.record()
            return False
        if self.wanted:
            ng.restarts += 1
        self.wanted = True
        self.failures = 0
        ng.config_valid = True
        ng.config_error = None
        ng.policy = spec.policy
        self.record()
        log(f"nginx listening on {spec.listen}:{spec.port} (pid {ng.pid}, {len(spec.backends)} backends, "
            f"{spec.policy})")
        return True

    def workers(self) -> set[int]:
        import psutil

        pid = self.door.pid
        if pid is None:
            return set()
        try:
            return {c.pid for c in psutil.Process(pid).children()}
        except psutil.Error:
            return set()

    def reload(self) -> bool:
        """Apply the current membership/policy. On failure the old config stays and the error is kept."""
        ng = self.sup.state.nginx
        assert ng is not None
        spec = self.spec()
        if not spec.backends:
            ng.config_error = "no instance is ready to receive requests; NGINX keeps the previous upstream"
            return False
        if self.door.pid is None:
            if self.door.spec is not None:
                self.door.spec = spec  # used when NGINX is started again
            return False
        check = self.door.reload(spec)
        ng.config_valid = check.ok
        ng.config_error = None if check.ok else check.error
        if check.ok:
            ng.policy = spec.policy
        else:
            log(f"nginx reload failed, previous config kept: {check.error}")
        self.record()
        return check.ok

    def follow(self) -> None:
        """Reload when the members' endpoints changed: a remote (Ray) instance that crashed or lost its
        node leaves the upstream, and comes back at the endpoint of its new placement. Under the lock."""
        if self.door.pid is None or self.door.spec is None:
            return
        if self.spec().backends != self.door.spec.backends:
            log("nginx follows the instances' endpoints")
            self.reload()

    def tick(self, now: float) -> bool:
        """Start NGINX again when it died (after its backoff). Under the lock; returns whether anything changed."""
        ng = self.sup.state.nginx
        if self.wanted and self.door.pid is None and now >= self.next_start:
            log(f"nginx (pid {ng.pid if ng else None}) is gone: starting it again with the last valid config")
            self.start()
            return True
        if self.wanted and ng is not None and ng.pid != self.door.pid:
            self.record()
            return True
        return False

    def stop(self, timeout: float) -> None:
        """Stop NGINX and whatever is left of its group. Under the lock."""
        ng = self.sup.state.nginx
        ng_ref = ng.ref(self.sup.state.owner) if ng else None
        if self.door.pid is not None:
            self.door.stop(timeout=min(3.0, timeout))
        processes.kill_group_remnants(ng_ref)
        if ng is not None:
            ng.pid = None

    # ------------------------------------------------------------------------------------ logs

    def housekeeping(self) -> None:
        """Cap NGINX's logs, then follow the access log."""
        prefix = self.sup.dir / processes.NGINX_DIR
        for name in ("error.log", "stderr.log"):
            st_mod.rotate_log(prefix / "logs" / name, LOG_MAX_BYTES)
        with self.sup.lock:
            if self.door.pid is not None:
                try:
                    self.door.rotate_access_log(ACCESS_LOG_MAX_BYTES)
                except OSError:
                    pass
        self._follow_access_log()

    def _follow_access_log(self) -> None:
        """Feed NGINX's access log to the follower and persist its per-upstream totals."""
        try:
            if self.follower is None:
                from llama_tui.core.fleet.accesslog import AccessLogFollower

                self.follower = AccessLogFollower(self.door.access_log)
            self.follower.poll()
            self.totals = self.follower.totals()
            paths.write_private(self.sup.dir / st_mod.UPSTREAM_FILE, orjson.dumps(self.follower.to_json()))
        except Exception as exc:  # statistics must never take the supervisor down
            if not self.follower_error_logged:
                self.follower_error_logged = True
                log(f"access-log statistics unavailable: {type(exc).__name__}: {exc}")
