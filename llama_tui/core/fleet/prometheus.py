"""The fleet as Prometheus metrics: a custom collector over the supervisor's latest sample.

A scrape only formats numbers the supervisor already holds (`MetricsSample`: the latest
`FleetSnapshot`, the access log's totals); it never reaches an instance or NGINX. The supervisor's
sampler (`metrics_server.py`) takes samples on its own clock, so scraping at any rate leaves the
fleet's load unchanged.

    llama_tui_instance_*        per instance (labels index, host, node, port): state, slots, requests,
                                tok/s, restarts, CPU, RSS, GPU memory and utilisation, uptime
    llama_tui_backend_*         per NGINX backend from the access log (labels backend, index, host, node,
                                port): requests, errors by status, aborted, response and header time histograms
    llama_tui_frontdoor_*       NGINX: up, config valid, requests by client status, connections (stub_status)
    llama_tui_system_*, llama_tui_gpu_*   the supervisor's machine
    llama_tui_node_*            each node of a fleet on several machines (Ray; labels node, host): CPU,
                                memory, GPU memory and utilisation
    llama_tui_metrics_*         the sampler: samples taken, the latest one's time and duration
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from llama_tui import __version__
from llama_tui.core.fleet.accesslog import LATENCY_BUCKETS, AccessTotals, Histogram
from llama_tui.core.fleet.frontdoor import Backend
from llama_tui.core.snapshots import INSTANCE_STATES, FleetSnapshot, InstanceSnapshot, SystemSample

INSTANCE_LABELS = ("index", "host", "node", "port")
BACKEND_LABELS = ("backend", *INSTANCE_LABELS)
NODE_LABELS = ("node", "host")


@dataclass(frozen=True)
class MetricsSample:
    """What the supervisor knew at `taken_at`; frozen, handed from the sampler to the scrapes."""

    taken_at: float
    duration_s: float  # how long taking it took
    snapshot: FleetSnapshot
    access: AccessTotals | None  # None until NGINX's access log has been read
    samples: int  # samples taken since the listener started


def _instance_labels(i: InstanceSnapshot) -> list[str]:
    return [str(i.index), i.host or "", i.node or "", str(i.port)]


def _gauge(name: str, doc: str, labels: tuple[str, ...] = (), unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels), unit=unit)


def _histogram(name: str, doc: str, rows: list[tuple[list[str], Histogram]]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=list(BACKEND_LABELS), unit="seconds")
    for labels, h in rows:
        cumulative, buckets = 0, []
        for bound, n in zip((*(str(b) for b in LATENCY_BUCKETS), "+Inf"), h.counts):
            cumulative += n
            buckets.append((bound, cumulative))
        fam.add_metric(labels, buckets, h.sum)
    return fam


def instance_families(snap: FleetSnapshot) -> list[Metric]:
    state = _gauge("llama_tui_instance_state", "1 for the instance's state (starting, ready, restarting, draining, "
                   "failed, stopped), 0 for the others", (*INSTANCE_LABELS, "state"))
    restarts = CounterMetricFamily("llama_tui_instance_restarts", "Times the supervisor started the instance again",
                                   labels=list(INSTANCE_LABELS))
    values: dict[str, tuple[GaugeMetricFamily, Callable[[InstanceSnapshot], float | None]]] = {
        "slots_busy": (_gauge("llama_tui_instance_slots_busy", "Slots processing a request (/slots)", INSTANCE_LABELS),
                       lambda i: i.slots_busy),
        "slots_total": (_gauge("llama_tui_instance_slots_total", "Slots of the instance (/slots)", INSTANCE_LABELS),
                        lambda i: i.slots_total),
        "processing": (_gauge("llama_tui_instance_requests_processing", "Requests in progress (llamacpp metrics)",
                              INSTANCE_LABELS), lambda i: i.requests_processing),
        "deferred": (_gauge("llama_tui_instance_requests_deferred", "Requests waiting for a slot (llamacpp metrics)",
                            INSTANCE_LABELS), lambda i: i.requests_deferred),
        "tok_s": (_gauge("llama_tui_instance_tokens_per_second", "Generated tokens per second, from the server's "
                         "tokens_predicted_total between the supervisor's last two samples", INSTANCE_LABELS),
                  lambda i: i.server_tok_s),
        "cpu": (_gauge("llama_tui_instance_cpu_cores", "CPU used by the instance's processes, in cores",
                       INSTANCE_LABELS), lambda i: None if i.cpu_percent is None else i.cpu_percent / 100.0),
        "rss": (_gauge("llama_tui_instance_resident_memory", "Resident memory of the instance's processes",
                       INSTANCE_LABELS, "bytes"), lambda i: i.rss_bytes),
        "gpu_mem": (_gauge("llama_tui_instance_gpu_memory", "GPU memory used by the instance's processes (NVML)",
                           INSTANCE_LABELS, "bytes"), lambda i: i.gpu_memory_bytes),
        "gpu_util": (_gauge("llama_tui_instance_gpu_utilization_ratio", "GPU utilisation of the instance's "
                            "processes, 0-1 (NVML)", INSTANCE_LABELS),
                     lambda i: None if i.gpu_util_percent is None else i.gpu_util_percent / 100.0),
        "uptime": (_gauge("llama_tui_instance_uptime", "Seconds since the instance started", INSTANCE_LABELS,
                          "seconds"), lambda i: i.uptime_s),
        "threads": (_gauge("llama_tui_instance_threads", "Threads of the instance (-t)", INSTANCE_LABELS),
                    lambda i: i.threads),
    }
    for inst in snap.instances:
        labels = _instance_labels(inst)
        for s in INSTANCE_STATES:
            state.add_metric([*labels, s], 1.0 if inst.state == s else 0.0)
        restarts.add_metric(labels, inst.restarts)
        for fam, get in values.values():
            v = get(inst)
            if v is not None:  # unknown (n/a) is left out, not exported as 0
                fam.add_metric(labels, float(v))
    return [state, restarts, *(fam for fam, _ in values.values())]


def backend_families(snap: FleetSnapshot, access: AccessTotals | None) -> list[Metric]:
    requests = CounterMetricFamily("llama_tui_backend_requests", "Tries NGINX sent to the backend (access log)",
                                   labels=list(BACKEND_LABELS))
    errors = CounterMetricFamily("llama_tui_backend_errors", "Tries that failed, by the backend's status (502: "
                                 "refused or failed before answering, 503: loading, truncated: the stream broke "
                                 "off, client NNN: NGINX answered NNN)", labels=[*BACKEND_LABELS, "status"])
    aborted = CounterMetricFamily("llama_tui_backend_aborted", "Responses the client closed before the end",
                                  labels=list(BACKEND_LABELS))
    by_address = {Backend(i.host or "", i.port).address: i for i in snap.instances if i.host}
    response, header = [], []
    for b in access.backends if access is not None else ():
        inst = by_address.get(b.address)
        labels = [b.address, *(_instance_labels(inst) if inst is not None else ["", "", "", ""])]
        requests.add_metric(labels, b.requests)
        aborted.add_metric(labels, b.aborted)
        for status, n in b.errors_by_status:
            errors.add_metric([*labels, status], n)
        response.append((labels, b.response))
        header.append((labels, b.header))
    return [requests, errors, aborted,
            _histogram("llama_tui_backend_response", "Upstream response time of each try (access log)", response),
            _histogram("llama_tui_backend_header", "Upstream header time of each try, about time to first byte "
                       "(access log)", header)]


def frontdoor_families(snap: FleetSnapshot, access: AccessTotals | None) -> list[Metric]:
    up = _gauge("llama_tui_frontdoor_up", "1 while NGINX runs")
    valid = _gauge("llama_tui_frontdoor_config_valid", "1 when NGINX's last config change passed nginx -t")
    conns = _gauge("llama_tui_frontdoor_connections", "NGINX's connections by state (stub_status)", ("state",))
    requests = CounterMetricFamily("llama_tui_frontdoor_requests", "Requests NGINX answered, by the status it "
                                   "gave the client (access log)", labels=["status"])
    ng = snap.nginx
    if ng is not None:
        up.add_metric([], 1.0 if ng.pid else 0.0)
        if ng.config_valid is not None:
            valid.add_metric([], 1.0 if ng.config_valid else 0.0)
        for key in ("active", "reading", "writing", "waiting"):
            if ng.stub_status and key in ng.stub_status:
                conns.add_metric([key], float(ng.stub_status[key]))
    for status, n in access.by_client_status if access is not None else ():
        requests.add_metric([status], n)
    return [up, valid, conns, requests]


def _machine_families(prefix: str, whose: str, labels: tuple[str, ...],
                      machines: list[tuple[list[str], SystemSample]]) -> list[Metric]:
    """CPU, memory and GPUs of each machine in `machines` (label values, its SystemSample)."""
    cpu = _gauge(f"{prefix}_cpu_ratio", f"CPU busy on {whose}, 0-1", labels)
    used = _gauge(f"{prefix}_memory_used", f"Memory in use on {whose}", labels, "bytes")
    total = _gauge(f"{prefix}_memory_total", f"Memory of {whose}", labels, "bytes")
    gpu_labels = (*labels, "gpu", "name")
    gpu = "llama_tui_gpu" if prefix == "llama_tui_system" else f"{prefix}_gpu"
    gpu_used = _gauge(f"{gpu}_memory_used", f"GPU memory in use on {whose} (NVML)", gpu_labels, "bytes")
    gpu_total = _gauge(f"{gpu}_memory_total", f"GPU memory of {whose} (NVML)", gpu_labels, "bytes")
    gpu_util = _gauge(f"{gpu}_utilization_ratio", f"GPU utilisation on {whose}, 0-1 (NVML)", gpu_labels)
    for values, s in machines:
        for fam, v in ((cpu, None if s.cpu_percent is None else s.cpu_percent / 100.0),
                       (used, s.memory_used_bytes), (total, s.memory_total_bytes)):
            if v is not None:
                fam.add_metric(values, float(v))
        for g in s.gpus:
            glabels = [*values, str(g.index), g.name or ""]
            for fam, v in ((gpu_used, g.memory_used_bytes), (gpu_total, g.memory_total_bytes),
                           (gpu_util, None if g.util_percent is None else g.util_percent / 100.0)):
                if v is not None:
                    fam.add_metric(glabels, float(v))
    return [cpu, used, total, gpu_used, gpu_total, gpu_util]


def system_families(snap: FleetSnapshot) -> list[Metric]:
    """The supervisor's machine."""
    machines = [([], snap.system)] if snap.system is not None else []
    return _machine_families("llama_tui_system", "the supervisor's machine", (), machines)


def node_families(snap: FleetSnapshot) -> list[Metric]:
    """Each node of a fleet placed over several machines (Ray), with its own numbers; none for a local fleet."""
    machines = [([n.node, n.host], n.system) for n in snap.nodes if n.system is not None]
    return _machine_families("llama_tui_node", "the node", NODE_LABELS, machines) if snap.nodes else []


def families(sample: MetricsSample | None, now: float | None = None) -> list[Metric]:
    """Every metric family for `sample` (None: the sampler has not finished its first sample)."""
    now = time.time() if now is None else now
    samples = CounterMetricFamily("llama_tui_metrics_samples", "Samples the supervisor took of the fleet (its own "
                                  "clock; scrapes take none)")
    info = _gauge("llama_tui_info", "llama-tui's version and the fleet's model", ("version", "model"))
    out: list[Metric] = [samples, info]
    samples.add_metric([], sample.samples if sample is not None else 0)
    if sample is None:
        info.add_metric([__version__, ""], 1.0)
        return out
    snap = sample.snapshot
    info.add_metric([__version__, snap.model or ""], 1.0)
    taken = _gauge("llama_tui_metrics_sample_timestamp", "When the latest sample was taken", unit="seconds")
    taken.add_metric([], sample.taken_at)
    age = _gauge("llama_tui_metrics_sample_age", "Seconds since the latest sample, at this scrape", unit="seconds")
    age.add_metric([], max(0.0, now - sample.taken_at))
    duration = _gauge("llama_tui_metrics_sample_duration", "How long the latest sample took", unit="seconds")
    duration.add_metric([], sample.duration_s)
    instances = _gauge("llama_tui_fleet_instances", "Instances of the fleet (any state)")
    instances.add_metric([], float(len(snap.instances)))
    out += [taken, age, duration, instances]
    out += instance_families(snap)
    out += backend_families(snap, sample.access)
    out += frontdoor_families(snap, sample.access)
    out += system_families(snap)
    out += node_families(snap)
    return out


class FleetCollector:
    """A prometheus_client collector over `latest()` (the sampler's latest MetricsSample)."""

    def __init__(self, latest: Callable[[], MetricsSample | None]) -> None:
        self.latest = latest

    def describe(self) -> list[Metric]:
        return []  # registering must not collect

    def collect(self) -> Iterator[Metric]:
        yield from families(self.latest())
