"""Snapshots are immutable all the way down: no field can be set, and no container inside one can change."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import orjson
import pytest

from llama_tui.core import snapshots
from llama_tui.core.snapshots import (
    BenchSample,
    FleetSnapshot,
    FrozenMap,
    GpuSample,
    InstanceSnapshot,
    NodeSample,
    StepVerdict,
    SweepCellResult,
    SweepProgress,
    SystemSample,
    UpstreamSnapshot,
    UpstreamStat,
)

# Built the way producers build them: with lists and dicts (state files, access-log counters, results rows).
GPU = GpuSample(0, "H100", 20 * 2**30, 80 * 2**30, 55.0)
INSTANCE = InstanceSnapshot(index=0, port=18080, pid=4100, state="ready", log_path="/l/0.log",
                            cpus=[0, 1])  # type: ignore[arg-type]
STAT = UpstreamStat(address="127.0.0.1:18080", requests=9, errors=3, errors_by_status={"502": 2, "503": 1})
UPSTREAM = UpstreamSnapshot(port=18000, pid=4000, policy="least_conn", upstreams=[STAT],  # type: ignore[arg-type]
                            stub_status={"active": 3, "writing": 2})
SYSTEM = SystemSample(cpu_percent=12.0, cores=2, memory_used_bytes=1, memory_total_bytes=2,
                      gpus=[GPU])  # type: ignore[arg-type]
NODE = NodeSample(node="3f2a9c", host="10.0.0.7", system=SYSTEM)
FLEET = FleetSnapshot(taken_at=1.0, running=True, supervisor_pid=3900, supervisor_alive=True, model="m.gguf",
                      parallel=2, instances=[INSTANCE], nginx=UPSTREAM, system=SYSTEM,  # type: ignore[arg-type]
                      warnings=["one warning"], nodes=[NODE])  # type: ignore[arg-type]
SAMPLE = BenchSample(t=0.5, step=0, concurrency=2, rate=None, tok_s=100.0, inflight=2, requests_done=4,
                     ttft_p50_ms=12.0, errors=0)
VERDICT = StepVerdict.from_step({"step": 1, "concurrency": 4, "output_tok_s": 90.5, "valid": True})
CELL = SweepCellResult(instances=1, parallel=2, concurrency=4, tok_s=80.0)
ROW = {"instances": 1, "parallel": 2, "concurrency": 4, "gpus": [{"index": 0, "name": "H100"}],
       "metadata": {"build": {"number": 1}, "flags": ["-t", "1"]}}
PROGRESS = SweepProgress(t=3.0, cell=1, cells_total=4, results=[CELL], row=ROW)  # type: ignore[arg-type]

EVERY = (GPU, INSTANCE, STAT, UPSTREAM, SYSTEM, NODE, FLEET, SAMPLE, VERDICT, CELL, PROGRESS)


def _containers(value, path="value"):
    """Every tuple and mapping inside `value` (snapshots included), with where it was found."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _containers(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, dict):
        yield path, value
        for k, v in value.items():
            yield from _containers(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        yield path, value
        for n, v in enumerate(value):
            yield from _containers(v, f"{path}[{n}]")


def test_every_snapshot_type_is_covered_and_frozen():
    types = {cls for _, cls in inspect.getmembers(snapshots, inspect.isclass) if dataclasses.is_dataclass(cls)
             and cls.__module__ == snapshots.__name__ and not cls.__name__.startswith("_")}
    assert types == {type(s) for s in EVERY}, "a new snapshot type needs a case here"
    assert all(cls.__dataclass_params__.frozen for cls in types)


@pytest.mark.parametrize("snap", EVERY, ids=lambda s: type(s).__name__)
def test_no_field_can_be_set(snap):
    for f in dataclasses.fields(snap):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(snap, f.name, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.extra = 1  # type: ignore[attr-defined]
    hash(snap)  # only possible when nothing inside is a list or a dict


@pytest.mark.parametrize("snap", EVERY, ids=lambda s: type(s).__name__)
def test_no_container_inside_can_change(snap):
    for where, value in _containers(snap):
        assert isinstance(value, (tuple, FrozenMap)), f"{where} is a {type(value).__name__}"
        if isinstance(value, tuple):
            assert not hasattr(value, "append")
            continue
        for attempt in (lambda m: m.__setitem__("k", 1), lambda m: m.__delitem__(next(iter(m), "k")),
                        lambda m: m.update(k=1), lambda m: m.pop(next(iter(m), "k")), lambda m: m.popitem(),
                        lambda m: m.clear(), lambda m: m.setdefault("k", 1), lambda m: m.__ior__({"k": 1})):
            before = dict(value)
            with pytest.raises(TypeError, match="read-only"):
                attempt(value)
            assert dict(value) == before, where


def test_containers_are_frozen_all_the_way_down_and_still_compare_as_given():
    assert INSTANCE.cpus == (0, 1) and STAT.errors_by_status == {"502": 2, "503": 1}
    assert FLEET.instances == (INSTANCE,) and FLEET.warnings == ("one warning",)
    row = PROGRESS.row
    assert snapshots.thaw(row) == ROW and isinstance(row["metadata"]["build"], FrozenMap)
    assert row["gpus"] == ({"index": 0, "name": "H100"},) and row["metadata"]["flags"] == ("-t", "1")
    with pytest.raises(TypeError):
        row["metadata"]["build"]["number"] = 2
    ROW["instances"] = 99  # the producer's own dict is not shared with the snapshot
    assert PROGRESS.row["instances"] == 1
    ROW["instances"] = 1
    assert dataclasses.replace(FLEET, warnings=["a", "b"]).warnings == ("a", "b")  # replace() freezes too
    for clone in (copy.copy(PROGRESS), copy.deepcopy(PROGRESS), pickle.loads(pickle.dumps(PROGRESS))):
        assert clone == PROGRESS and isinstance(clone.row, FrozenMap)


def test_to_json_is_plain_mutable_data_and_serializes_as_before():
    data = FLEET.to_json()
    assert type(data["nginx"]["stub_status"]) is dict and type(data["instances"]) is list
    data["instances"][0]["url"] = "http://127.0.0.1:18080"  # what `fleet status --json` adds
    data["nginx"]["upstreams"][0]["errors_by_status"]["504"] = 1
    assert "url" not in dataclasses.asdict(FLEET)["instances"][0] and "504" not in STAT.errors_by_status
    for snap in EVERY:  # the JSON bytes are what asdict() of the mutable classes gave
        assert orjson.dumps(snap.to_json()) == orjson.dumps(dataclasses.asdict(snap))
    assert orjson.loads(orjson.dumps(FLEET.to_json()))["instances"][0]["cpus"] == [0, 1]


@pytest.mark.parametrize("snap", EVERY, ids=lambda s: type(s).__name__)
def test_from_json_rebuilds_every_snapshot_from_its_json(snap):
    data = orjson.loads(orjson.dumps(snap.to_json()))  # what crosses a child process's pipe
    assert type(snap).from_json(data) == snap


def test_from_json_rebuilds_nested_snapshots_and_drops_keys_it_does_not_know():
    data = {**PROGRESS.to_json(), "ci_low": 1.0}  # a field of a newer sweep child
    back = SweepProgress.from_json(data)
    assert back == PROGRESS and isinstance(back.results[0], SweepCellResult) and isinstance(back.row, FrozenMap)
    fleet = FleetSnapshot.from_json(FLEET.to_json())
    assert isinstance(fleet.nginx, UpstreamSnapshot) and isinstance(fleet.nginx.upstreams[0], UpstreamStat)
    assert isinstance(fleet.system.gpus[0], GpuSample) and fleet.instances[0].cpus == (0, 1)
    assert FleetSnapshot.from_json({**FLEET.to_json(), "nginx": None, "system": None}).nginx is None
    with pytest.raises(TypeError):  # a field it needs is missing
        SweepProgress.from_json({"t": 1.0})
