"""What the supervisor of a remote fleet (Ray) publishes about its instances, so that clients need not
join the cluster: `fleet status` and the TUI read `placement.json` instead of becoming Ray drivers.

Once a second the supervisor asks its placement for every running instance's process stats and each
node's own numbers (`Publisher`, in a thread of its own) and writes them, atomically, with the time.
`PublishedPlacement` answers a snapshot's questions (`attach`, `stats`, `node_systems`) from that file
while it is fresh; when it is not (no supervisor), the snapshot asks the cluster itself.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import orjson

from llama_tui.core import paths
from llama_tui.core.fleet.placement import Endpoint, InstanceHandle, ProcessStats
from llama_tui.core.fleet.state import InstanceState, log
from llama_tui.core.snapshots import GpuSample, NodeSample, SystemSample

if TYPE_CHECKING:
    from llama_tui.core.fleet.instances import Instances

PUBLISHED_FILE = "placement.json"
EVERY_S = 1.0
FRESH_S = 5.0  # older than this, the file says nothing about now


def _handle(d: dict[str, Any]) -> InstanceHandle:
    return InstanceHandle(d["index"], Endpoint(d["host"], d["port"], d["node"]), d["pid"], d.get("started"))


def _system(d: dict[str, Any] | None) -> SystemSample | None:
    if d is None:
        return None
    return SystemSample(**{**d, "gpus": tuple(GpuSample(**g) for g in d.get("gpus") or ())})


class Publisher:
    """The supervisor's side: `run` writes the file every EVERY_S seconds until `stop` is set."""

    def __init__(self, instances: "Instances", state_dir: Path) -> None:
        self.instances = instances
        self.path = Path(state_dir) / PUBLISHED_FILE

    def publish(self) -> None:
        sup = self.instances.sup
        with sup.lock:
            handles = [i.handle for i in self.instances.items if i.handle is not None]
        placement = self.instances.placement
        stats = placement.stats(handles) if handles else {}
        node_systems = getattr(placement, "node_systems", None)
        data = {"taken_at": time.time(), "instances": [
            {"index": h.index, "host": h.endpoint.host, "port": h.endpoint.port, "node": h.endpoint.node, "pid": h.pid,
             "started": h.started, "stats": dataclasses.asdict(stats[h]) if h in stats else None} for h in handles],
            "nodes": [dataclasses.asdict(n) for n in (node_systems() if node_systems else ())]}
        paths.write_private(self.path, orjson.dumps(data))

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(EVERY_S):
            try:
                self.publish()
            except Exception:
                log(f"publishing the placement failed:\n{traceback.format_exc()}")


def fresh(state_dir: Path) -> bool:
    try:
        return time.time() - (Path(state_dir) / PUBLISHED_FILE).stat().st_mtime < FRESH_S
    except OSError:
        return False


class PublishedPlacement:
    """A client's read-only placement: what the supervisor last published (None / left out when stale)."""

    starts_in_background = True

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / PUBLISHED_FILE
        self._data: dict[str, Any] = {}
        self._mtime = 0.0

    def _read(self) -> dict[str, Any]:
        try:
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                self._data, self._mtime = orjson.loads(self.path.read_bytes()), mtime
        except (OSError, orjson.JSONDecodeError):
            self._data = {}
        return self._data if time.time() - float(self._data.get("taken_at", 0)) < FRESH_S else {}

    def _records(self) -> dict[int, dict[str, Any]]:
        return {d["index"]: d for d in self._read().get("instances", ())}

    def attach(self, rec: InstanceState) -> InstanceHandle | None:
        d = self._records().get(rec.index)
        return _handle(d) if d is not None else None

    def stats(self, handles: Sequence[InstanceHandle]) -> dict[InstanceHandle, ProcessStats]:
        recs = self._records()
        out = {}
        for h in handles:
            d = recs.get(h.index)
            if d is not None and d.get("stats") and _handle(d) == h:
                out[h] = ProcessStats(**d["stats"])
        return out

    def node_systems(self) -> tuple[NodeSample, ...]:
        return tuple(NodeSample(n["node"], n["host"], _system(n.get("system"))) for n in self._read().get("nodes", ()))

    def close(self) -> None:
        pass
