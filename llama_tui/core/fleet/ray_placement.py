"""`RayPlacement`: instances as detached Ray actors across a cluster (the second implementation of the
placement seam, see `placement.py`; the node side is `ray_actor.py`).

- Each instance is an `InstanceActor`, detached and named `i<index>-<random>` in the fleet's namespace,
  so it outlives the supervisor and any shell finds it again (`attach`). It sits in one bundle of a
  placement group that reserves its CPUs (its threads), its GPUs (`--gpus-per-instance`) and a sliver
  of `--node-resource`; the group's strategy is SPREAD or PACK (`--placement`).
- Groups are made per batch of new instances (`reserve`: at start, at each scale up) and recorded in
  `ray.json` beside the fleet's state, so a new supervisor finds them; a group goes when all its
  instances have left (`release`). An instance restarted, or re-created after its node was lost, goes
  back into its bundle, which Ray reschedules on the remaining nodes.
- Starting takes seconds (a worker process on some node; after a node loss, the wait until Ray gives
  up on that node), so the supervisor calls `start` in a worker thread (`starts_in_background`) and
  `cancel` aborts one. Every other call returns at once or within a short timeout: `poll` answers
  from the last reply and asks again in the background.
- `poll` also copies the instance's log home, to the same `rec.log_path` a local instance writes, so
  `fleet logs`, crash summaries and rotation work unchanged.
- An instance's identity is its actor, not a pid: nothing on any machine signals a Ray instance's
  llama-server by pid (`InstanceState.local` is false for it), its owner marker names no state dir
  (`ray_owner_marker`), and `listens` asks the actor whether its own llama-server holds the port.
  Like a local one, it requires the fleet's internal key (in its environment, never its command line).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import orjson

from llama_tui.core import paths
from llama_tui.core.fleet import keys, ray_cluster
from llama_tui.core.fleet.placement import Endpoint, ExitStatus, InstanceHandle, PlacementError, ProcessStats
from llama_tui.core.fleet.ray_actor import InstanceActor
from llama_tui.core.fleet.spec import FleetSpec
from llama_tui.core.fleet.state import InstanceState, log
from llama_tui.core.snapshots import NodeSample

RAY_STATE_FILE = "ray.json"
CALL_TIMEOUT_S = 3.0  # a reply that takes longer is not waited for (its node may be gone)
LISTEN_TIMEOUT_S = 1.0  # `listens` is asked under the supervisor's lock
RETRY_S = 1.0  # after an actor died before it started (placed on a node that was being lost)
NODE_RESOURCE_SHARE = 0.001  # of --node-resource per instance: pins without using it up


@dataclass
class _Tracked:
    """What this placement knows of one running actor."""

    name: str
    actor: Any
    log_path: str
    offset: int = 0  # bytes of the node's log copied home
    pending: Any = None  # the poll call in flight
    listening: bool = False  # its llama-server was seen holding its port
    last: ExitStatus | None = None
    gone: bool = False


def ray_owner_marker(namespace: str, state_dir: Path | None) -> str:
    """The owner marker (LLAMA_TUI_OWNER) of a Ray instance: its fleet's namespace and state dir. It is
    never a state dir itself, so no local fleet's owner scan, on any node (the same state dir path may
    exist on every box), takes a Ray instance for one of its own processes: a Ray instance is its actor's,
    and only the placement (or `fleet down` clearing the namespace) stops it."""
    return f"ray:{namespace}:{paths.owner_marker(state_dir) if state_dir is not None else ''}"


class RayPlacement:
    starts_in_background = True

    def __init__(self, spec: FleetSpec, state_dir: Path | None = None, key: str | None = None) -> None:
        if not spec.ray_address or not spec.ray_namespace:
            raise PlacementError("a Ray fleet needs its cluster address and namespace (see `fleet up --engine ray`)")
        self.spec = spec
        self.dir = Path(state_dir) if state_dir is not None else None
        self.key = key
        self.ns = spec.ray_namespace
        self.ray = ray_cluster.connect(spec.ray_address, self.ns)
        self._cls = self.ray.remote(InstanceActor)
        self._lock = threading.RLock()
        self._tracked: dict[InstanceHandle, _Tracked] = {}
        self._starting: dict[int, Any] = {}  # index -> actor being started
        self._cancelled: set[int] = set()
        self._groups: dict[str, list[int | None]] = self._load_groups()
        self._names: tuple[float, list[str]] = (0.0, [])
        self._nodes: dict[str, NodeSample] = {}

    # ------------------------------------------------------------------------------------ groups

    def _groups_path(self) -> Path | None:
        return self.dir / RAY_STATE_FILE if self.dir is not None else None

    def _load_groups(self) -> dict[str, list[int | None]]:
        path = self._groups_path()
        try:
            data = orjson.loads(path.read_bytes()) if path is not None else {}
        except (OSError, orjson.JSONDecodeError):
            data = {}
        return {str(k): list(v) for k, v in (data.get("groups") or {}).items()} if data.get("namespace") == self.ns else {}

    def _save_groups(self) -> None:
        path = self._groups_path()
        if path is not None:
            paths.write_private(path, orjson.dumps({"namespace": self.ns, "groups": self._groups}))

    def _bundle(self) -> dict[str, float]:
        b = {"CPU": float(self.spec.threads or 1)}
        if self.spec.gpus_per_instance:
            b["GPU"] = float(self.spec.gpus_per_instance)
        if self.spec.node_resource:
            b[self.spec.node_resource] = NODE_RESOURCE_SHARE
        return b

    def reserve(self, indices: Sequence[int]) -> None:
        """A placement group (one bundle each) for the instances that have none yet."""
        from ray.util.placement_group import placement_group

        with self._lock:
            have = {i for members in self._groups.values() for i in members if i is not None}
            new = [i for i in indices if i not in have]
            if not new:
                return
            name = f"{self.ns}:pg-{secrets.token_hex(3)}"
            strategy = "SPREAD" if self.spec.placement == "spread" else "PACK"
            placement_group([self._bundle() for _ in new], strategy=strategy, name=name, lifetime="detached")
            self._groups[name] = list(new)
            self._save_groups()
            log(f"ray: placement group {name} ({strategy}) for instances {new}, each {self._bundle()}")

    def release(self, indices: Sequence[int]) -> None:
        """The instances left the fleet for good: remove the groups none of whose instances remain."""
        from ray.util.placement_group import get_placement_group, remove_placement_group

        with self._lock:
            for name, members in list(self._groups.items()):
                self._groups[name] = [None if i in indices else i for i in members]
                if all(i is None for i in self._groups[name]):
                    del self._groups[name]
                    try:
                        remove_placement_group(get_placement_group(name))
                    except Exception as exc:  # already gone
                        log(f"ray: placement group {name}: {type(exc).__name__}: {exc}")
            self._save_groups()

    def _slot(self, index: int) -> tuple[Any, int]:
        from ray.util.placement_group import get_placement_group

        for attempt in range(2):
            with self._lock:
                for name, members in self._groups.items():
                    if index in members:
                        return get_placement_group(name), members.index(index)
            if attempt == 0:
                self.reserve([index])
        raise PlacementError(f"no placement group for instance {index}")

    # ------------------------------------------------------------------------------------ start

    def _banner(self, rec: InstanceState, restart: bool) -> None:
        path = Path(rec.log_path)
        try:
            paths.ensure_private_dir(path.parent)
            with open(path, "a") as f:
                f.write(f"--- llama-tui: instance {rec.index} {'restart' if restart else 'start'} at "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')} on Ray ({self.ns}): {' '.join(rec.cmd)}\n")
        except OSError:
            pass  # a full disk loses the banner, not the instance

    def _env(self) -> dict[str, str]:
        env = {paths.OWNER_ENV: ray_owner_marker(self.ns, self.dir)}
        return keys.instance_env(self.key, env) if self.key else env

    def _kill_actor(self, actor: Any) -> None:
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:
            pass  # already dead

    def start(self, rec: InstanceState, restart: bool = False) -> InstanceHandle:
        """Place the instance's actor, start its llama-server and return where it serves. Blocks until
        then (at most the fleet's ready timeout); retries when the actor dies before it started."""
        from ray.exceptions import GetTimeoutError, RayActorError
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        spec = self.spec
        self._banner(rec, restart)
        deadline = time.monotonic() + spec.ready_timeout
        self._cancelled.discard(rec.index)
        while True:
            pg, bundle = self._slot(rec.index)
            name = f"i{rec.index}-{secrets.token_hex(3)}"
            opts: dict[str, Any] = {"name": name, "namespace": self.ns, "lifetime": "detached", "max_restarts": 0,
                                    "num_cpus": float(spec.threads or 1),
                                    "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, bundle)}
            if spec.gpus_per_instance:
                opts["num_gpus"] = float(spec.gpus_per_instance)
            if spec.node_resource:
                opts["resources"] = {spec.node_resource: NODE_RESOURCE_SHARE}
            actor = self._cls.options(**opts).remote()
            with self._lock:
                self._starting[rec.index] = actor
            try:
                info = self.ray.get(actor.start.remote(rec.index, list(rec.cmd), self._env(), self.ns, str(spec.model),
                                                       [list(p) for p in spec.model_dirs]),
                                    timeout=max(1.0, deadline - time.monotonic()))
            except GetTimeoutError:
                self._kill_actor(actor)
                raise PlacementError(f"Ray did not place instance {rec.index} within {spec.ready_timeout:.0f}s: "
                                     f"no node has {self._bundle()} free (see `ray status`)") from None
            except RayActorError as exc:
                self._kill_actor(actor)
                if rec.index in self._cancelled:
                    raise PlacementError(f"the start of instance {rec.index} was cancelled") from None
                if time.monotonic() + RETRY_S >= deadline:
                    raise PlacementError(f"instance {rec.index}'s actor died before it started: "
                                         f"{_first_line(exc)}") from None
                log(f"ray: instance {rec.index}'s actor died before it started ({_first_line(exc)}); placing it again")
                time.sleep(RETRY_S)
                continue
            finally:
                with self._lock:
                    self._starting.pop(rec.index, None)
            if "error" in info:
                self._kill_actor(actor)
                raise PlacementError(info["error"] + (f" (fix: {info['fix']})" if info.get("fix") else ""))
            rec.cmd = list(info["cmd"])  # what runs there: the node's binary, bound to the node's address
            if info.get("nice"):
                log(f"ray: instance {rec.index} runs at nice {info['nice']} on {info['host']}: Ray starts its workers "
                    "at nice 15 and llama-server may not undo it there; start the node's Ray with "
                    "RAY_worker_niceness=0 in its environment (or as root)")
            return self._track(rec, actor, name, info, offset=0)

    def _track(self, rec: InstanceState, actor: Any, name: str, info: dict[str, Any], offset: int) -> InstanceHandle:
        handle = InstanceHandle(rec.index, Endpoint(info["host"], int(info["port"]), info["node_id"]), info["pid"],
                                info.get("started"))
        with self._lock:
            self._tracked[handle] = _Tracked(name, actor, rec.log_path, offset)
        return handle

    def cancel(self, index: int) -> None:
        """Abort a start in progress: its actor is killed and `start` raises PlacementError."""
        with self._lock:
            self._cancelled.add(index)
            actor = self._starting.get(index)
        if actor is not None:
            self._kill_actor(actor)

    # ------------------------------------------------------------------------------------ finding

    def _actor_names(self) -> list[str]:
        t, names = self._names
        if time.monotonic() - t > 1.0:
            names = list(self.ray.util.list_named_actors())
            self._names = (time.monotonic(), names)
        return names

    def attach(self, rec: InstanceState) -> InstanceHandle | None:
        prefix = f"i{rec.index}-"
        for name in [n for n in self._actor_names() if n.startswith(prefix)]:
            try:
                actor = self.ray.get_actor(name, namespace=self.ns)
                info = self.ray.get(actor.describe.remote(), timeout=CALL_TIMEOUT_S)
            except Exception:
                continue  # dead, or its node does not answer
            if info:  # copying its log goes on from the node log's end (an earlier supervisor copied the rest)
                return self._track(rec, actor, name, info, offset=int(info.get("log_size", 0)))
        return None

    # ------------------------------------------------------------------------------------ watching

    def _copy_log(self, t: _Tracked, data: bytes) -> None:
        if not data:
            return
        try:
            with open(t.log_path, "ab") as f:
                f.write(data)
        except OSError:
            pass

    def poll(self, handle: InstanceHandle) -> ExitStatus | None:
        from ray.exceptions import RayActorError

        with self._lock:
            t = self._tracked.get(handle)
            if t is None:
                return ExitStatus(None)
            if t.gone:
                return t.last
            if t.pending is not None:
                ready, _ = self.ray.wait([t.pending], timeout=0)
                if not ready:
                    return t.last
                try:
                    code, data, t.offset = self.ray.get(t.pending)
                    self._copy_log(t, data)
                    t.last = None if code is None else ExitStatus(code)
                except RayActorError:
                    t.last = ExitStatus(None)  # the actor (or its node) is gone, and its llama-server with it
                except Exception as exc:
                    log(f"ray: instance {handle.index}: poll failed: {_first_line(exc)}")
                t.pending = None
                t.gone = t.last is not None
                if t.gone:
                    return t.last
            t.pending = t.actor.poll.remote(t.offset)
            return t.last

    def listens(self, handle: InstanceHandle) -> bool:
        """Its llama-server holds its port on its node (the actor looks), not a process that took the port
        first. Asked when the endpoint first answers; once seen, it holds for as long as it runs. A node
        that does not answer within LISTEN_TIMEOUT_S says no (the next probe asks again)."""
        with self._lock:
            t = self._tracked.get(handle)
        if t is None or t.gone:
            return False
        if not t.listening:
            try:
                t.listening = bool(self.ray.get(t.actor.listening.remote(), timeout=LISTEN_TIMEOUT_S))
            except Exception:
                return False
        return t.listening

    def stats(self, handles: Sequence[InstanceHandle]) -> dict[InstanceHandle, ProcessStats]:
        with self._lock:
            calls = {h: self._tracked[h].actor.sample.remote() for h in handles
                     if h in self._tracked and not self._tracked[h].gone}
        if not calls:
            return {}
        ready, _ = self.ray.wait(list(calls.values()), num_returns=len(calls), timeout=CALL_TIMEOUT_S)
        done = set(ready)
        out = {}
        for h, ref in calls.items():
            if ref not in done:
                continue
            try:
                proc, system = self.ray.get(ref)
            except Exception:
                continue
            self._nodes[h.endpoint.node] = NodeSample(h.endpoint.node, h.endpoint.host, system)
            if proc is not None:
                out[h] = proc
        return out

    def node_systems(self) -> tuple[NodeSample, ...]:
        """Each node's own numbers (CPU, memory, GPUs), as its actors last reported them."""
        return tuple(sorted(self._nodes.values(), key=lambda n: n.host))

    # ------------------------------------------------------------------------------------ stopping

    def stop(self, handles: Sequence[InstanceHandle], timeout: float) -> None:
        """llama-server gets SIGTERM (SIGKILL after `timeout`), the rest of its log comes home, the actor goes."""
        with self._lock:
            tracked = [self._tracked.pop(h) for h in handles if h in self._tracked]
        calls = [(t, t.actor.stop.remote(timeout, t.offset)) for t in tracked]  # (a dead actor answers at once)
        if calls:
            self.ray.wait([r for _, r in calls], num_returns=len(calls), timeout=timeout + CALL_TIMEOUT_S)
        for t, ref in calls:
            try:
                self._copy_log(t, self.ray.get(ref, timeout=0)[1])
            except Exception:
                pass  # its actor or node is gone, and its llama-server with it
        for t in tracked:
            self._kill_actor(t.actor)

    def kill(self, handle: InstanceHandle) -> None:
        with self._lock:
            t = self._tracked.get(handle)
        if t is not None and not t.gone:
            t.actor.kill.remote()

    def close(self) -> None:
        pass  # the actors are detached: they keep serving


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
