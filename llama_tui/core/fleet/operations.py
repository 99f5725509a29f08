"""What the supervisor does on request: scale, restart, change the policy, stop the fleet.

One operation runs at a time (`op_lock`); the watch loop keeps going while an operation waits. An
instance that leaves (scale down, a graceful restart) leaves NGINX first and finishes its open
streams before it stops; new ones join NGINX once ready.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from llama_tui.core.config import check_seconds
from llama_tui.core.errors import UserError
from llama_tui.core.fleet.instances import STOP_TIMEOUT_S, Instance
from llama_tui.core.fleet.ports import check_ports
from llama_tui.core.fleet.processes import alive
from llama_tui.core.fleet.state import log

if TYPE_CHECKING:
    from llama_tui.core.fleet.supervisor import Supervisor


class Operations:
    def __init__(self, sup: "Supervisor") -> None:
        self.sup = sup
        self.op_lock = threading.Lock()  # one operation at a time

    def drain_and_stop(self, leaving: list[Instance], timeout: float) -> dict[str, Any]:
        """Take `leaving` out of NGINX, let their open streams finish, then stop them."""
        sup = self.sup
        t0 = time.monotonic()
        with sup.lock:
            was_member = False
            for i in leaving:
                i.held = True
                was_member |= i.rec.in_upstream
                i.rec.in_upstream = False
                if i.alive():
                    i.rec.state = "draining"
            old_workers = sup.door.workers() if was_member else set()
            reloaded = sup.door.reload() if was_member else False
            sup.save()
        deadline = t0 + timeout
        import psutil

        # 1. NGINX's old workers finish the requests they took before the reload, then exit.
        while reloaded and time.monotonic() < deadline and not sup.shutting_down:
            if not any(psutil.pid_exists(p) and alive(p) for p in old_workers):
                break
            time.sleep(0.05)
        # 2. The instances finish what they still process.
        while time.monotonic() < deadline and not sup.shutting_down:
            busy = [i for i in leaving if i.alive() and sup.instances.busy(i)]
            if not busy:
                break
            time.sleep(0.1)
        drained = time.monotonic() < deadline
        sup.instances.stop(leaving)
        return {"drained": drained, "drain_s": round(time.monotonic() - t0, 2)}

    def _set_instances(self, n: int) -> None:
        sup = self.sup
        sup.spec = dataclasses.replace(sup.spec, instances=n)
        sup.state.spec = sup.spec.to_dict()

    def scale(self, n: int) -> dict[str, Any]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"scale needs 1 or more instances, got {n!r}", "pass a positive number")
        sup = self.sup
        with self.op_lock:
            with sup.lock:
                cur = sup.instances.sorted()
            have = len(cur)
            if n == have:
                return {"changed": False, "instances": n}
            if n > have:
                return self._scale_up(have, n)
            leaving = [i for i in cur if i.rec.index >= n]
            log(f"scale {have} -> {n}: draining instances {[i.rec.index for i in leaving]}")
            result = self.drain_and_stop(leaving, sup.spec.drain_timeout)
            with sup.lock:
                sup.instances.items = [i for i in sup.instances.items if i not in leaving]
                sup.instances.placement.release([i.rec.index for i in leaving])
                self._set_instances(n)
                sup.save()
            log(f"scale {have} -> {n}: done ({result})")
            return {"changed": True, "instances": n, **result}

    def _scale_up(self, have: int, n: int) -> dict[str, Any]:
        sup = self.sup
        indices = range(have, n)
        sup.spec.check_port_range(n)
        check_ports(sup.spec, indices=indices, nginx=False)
        threads = sup.spec.threads_for(n)
        with sup.lock:
            new = sup.instances.new(indices, threads)
            sup.instances.items.extend(new)
            sup.instances.placement.reserve(indices)
            for inst in new:
                sup.instances.spawn(inst)
            sup.save()
        log(f"scale {have} -> {n}: started instances {indices.start}-{indices.stop - 1}")
        failed = sup.instances.wait_ready(new)
        if failed:
            bad = failed[0].rec
            err = bad.last_error or f"not ready (state {bad.state})"
            with sup.lock:
                for inst in new:
                    inst.held = True
            sup.instances.stop(new)
            with sup.lock:
                sup.instances.items = [i for i in sup.instances.items if i not in new]
                sup.instances.placement.release(list(indices))
                sup.save()
            raise UserError(f"scale to {n} failed: instance {bad.index} (port {bad.port}) did not start: {err}",
                            f"the fleet stays at {have}; see {bad.log_path}")
        with sup.lock:
            for inst in new:
                inst.rec.in_upstream = True
            ok = sup.door.reload()
            self._set_instances(n)
            sup.save()
        log(f"scale {have} -> {n}: done (nginx reload {'ok' if ok else 'failed'})")
        return {"changed": True, "instances": n, "nginx_reloaded": ok}

    def _restart_one(self, index: int) -> dict[str, Any]:
        sup = self.sup
        with sup.lock:
            inst = next((i for i in sup.instances.items if i.rec.index == index), None)
            if inst is None:
                raise UserError(f"no instance {index} in the fleet",
                                f"pick one of: {', '.join(str(i.rec.index) for i in sup.instances.items)}")
            others = [i for i in sup.instances.items
                      if i is not inst and i.rec.in_upstream and i.rec.state == "ready"]
            graceful = inst.rec.in_upstream and bool(others) and inst.alive()
            inst.held = True
        result: dict[str, Any] = {"index": index, "graceful": graceful}
        if graceful:
            result.update(self.drain_and_stop([inst], sup.spec.drain_timeout))
        else:
            sup.instances.stop([inst])
        with sup.lock:
            inst.forget_failures()
            sup.instances.spawn(inst, restart=True)
            inst.held = False
            sup.save()
        failed = sup.instances.wait_ready([inst])
        if failed:
            raise UserError(f"instance {index} did not come back: {inst.rec.last_error}", f"see {inst.rec.log_path}")
        with sup.lock:
            if not inst.rec.in_upstream:
                inst.rec.in_upstream = True
                sup.door.reload()
            sup.save()
        log(f"instance {index} restarted ({result})")
        return result

    def restart(self, index: int | None) -> dict[str, Any]:
        with self.op_lock:
            with self.sup.lock:
                targets = [index] if index is not None else sorted(i.rec.index for i in self.sup.instances.items)
            return {"restarted": [self._restart_one(i) for i in targets]}

    def policy(self, policy: str) -> dict[str, Any]:
        from llama_tui.core.config import POLICIES

        if policy not in POLICIES:
            raise UserError(f"unknown policy {policy!r}", f"use one of: {', '.join(POLICIES)}")
        sup = self.sup
        with self.op_lock, sup.lock:
            ng = sup.state.nginx
            assert ng is not None
            if sup.door.pid is None:
                raise UserError("nginx is not running right now", "wait a few seconds for the supervisor to restart it")
            old = ng.policy
            ng.policy = policy
            ok = sup.door.reload()
            if not ok:
                ng.policy = old
                sup.save()
                raise UserError(f"nginx kept its previous config ({old}): {ng.config_error}",
                                "see the nginx error log: `llama-tui fleet logs nginx`")
            sup.spec = dataclasses.replace(sup.spec, policy=policy)
            sup.state.spec = sup.spec.to_dict()
            sup.save()
            log(f"policy {old} -> {policy}")
            return {"policy": policy, "previous": old}

    def down(self, timeout: float) -> dict[str, Any]:
        sup = self.sup
        with sup.lock:
            sup.shutting_down = True  # an operation in progress stops waiting and lets go of op_lock
        with self.op_lock:
            sup.shutdown(timeout=timeout)
        sup.exit_after_reply = True  # the main loop ends once the answer is sent
        return {"stopped": True}

    def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        """One control request -> its answer's fields (a UserError becomes the error answer)."""
        sup = self.sup
        op = req.get("op")
        if op == "ping":
            return {"pid": os.getpid(), "phase": sup.phase}
        if op == "down":
            return self.down(check_seconds(req.get("timeout") or STOP_TIMEOUT_S, "timeout", 0, 3600))
        if sup.shutting_down:
            raise UserError("the fleet is stopping", "wait for `fleet down` to finish")
        if sup.phase != "running":
            raise UserError("the fleet is still starting", "wait until `llama-tui fleet up` has returned")
        if op == "scale":
            return self.scale(req.get("n"))  # type: ignore[arg-type]
        if op == "restart":
            return self.restart(req.get("index"))
        if op == "policy":
            return self.policy(str(req.get("policy")))
        raise UserError(f"unknown supervisor request {op!r}", "update llama-tui: the command and supervisor differ")
