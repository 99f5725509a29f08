"""A step's verdicts: whether its throughput may be the client's rather than the servers' (`valid`), and
whether its latencies include the client's own scheduling delay (`latency_valid`)."""

from __future__ import annotations

CEILING_FRACTION = 0.70
CPU_SATURATED = 0.90
LOOP_LAG_LIMIT_MS = 25.0  # p99 above this: the latencies include client scheduling delay (latency_valid false)
LATE_START_FRACTION = 0.05  # mean loop lag above this share of the mean request: the offered load fell short
PROBE_RESOLUTION_MS = 1.0  # timer lateness the lag probe shows on an idle loop (epoll's millisecond timeouts)


def client_bottleneck(events_s_per_worker: float | None, max_worker_cpu: float | None, loop_lag_mean_ms: float | None,
                      e2e_mean_ms: float | None, ceiling: float | None) -> list[str]:
    """Why a step's throughput may be the client's rather than the servers' (empty: it is not)."""
    reasons = []
    if events_s_per_worker is not None and ceiling and events_s_per_worker > CEILING_FRACTION * ceiling:
        reasons.append(f"client at {100 * events_s_per_worker / ceiling:.0f}% of its calibrated ceiling "
                       f"({events_s_per_worker:.0f} of {ceiling:.0f} events/s per worker): add --workers")
    if max_worker_cpu is not None and max_worker_cpu > CPU_SATURATED:
        reasons.append(f"client CPU saturated ({100 * max_worker_cpu:.0f}% of a core in one worker): add --workers")
    # The probe's own resolution is not lateness: asyncio sleeps in epoll with millisecond timeouts, so
    # its timers fire up to ~1 ms late on an idle machine (0.67 ms mean measured here with one instance).
    late_ms = None if loop_lag_mean_ms is None else loop_lag_mean_ms - PROBE_RESOLUTION_MS
    if late_ms is not None and e2e_mean_ms and late_ms > LATE_START_FRACTION * e2e_mean_ms:
        reasons.append(f"client started requests late: mean event-loop lag {loop_lag_mean_ms:.1f} ms (beyond the "
                       f"probe's {PROBE_RESOLUTION_MS:.0f} ms resolution: {100 * late_ms / e2e_mean_ms:.0f}% of the "
                       f"mean request, {e2e_mean_ms:.0f} ms), so the offered load fell short (other processes "
                       "hold the cores)")
    return reasons


def latency_note(loop_lag_p99_ms: float | None) -> str | None:
    """Why a step's latencies include client scheduling delay (None: they do not). A late event loop (often:
    the fleet's threads hold the cores) adds its delay to the latencies measured, without necessarily
    lowering the throughput, which `client_bottleneck` judges."""
    if loop_lag_p99_ms is None or loop_lag_p99_ms <= LOOP_LAG_LIMIT_MS:
        return None
    return (f"client event-loop lag p99 {loop_lag_p99_ms:.0f} ms > {LOOP_LAG_LIMIT_MS:.0f} ms: "
            "latencies include up to that much client scheduling delay")
