"""A small client for llama-server's own endpoints: /health, /props, /slots, /metrics.

Readiness is `/health` answering 200 (503 while the model loads), not an open port. Every call has a
short timeout and turns connection trouble into None rather than an exception, because a monitor
polling many instances must not stall on one sick instance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

DEFAULT_TIMEOUT = httpx.Timeout(2.0, connect=0.5)

# Counters and gauges from `--metrics` (names vary between builds: missing names are tolerated).
TOKENS_PREDICTED_TOTAL = "llamacpp:tokens_predicted_total"
PROMPT_TOKENS_TOTAL = "llamacpp:prompt_tokens_total"
REQUESTS_PROCESSING = "llamacpp:requests_processing"
REQUESTS_DEFERRED = "llamacpp:requests_deferred"
PREDICTED_TOKENS_SECONDS = "llamacpp:predicted_tokens_seconds"


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text format -> {metric name: value}. Labelled series of one name are summed."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            rest = rest.rsplit("}", 1)[-1]
        else:
            name, _, rest = line.partition(" ")
        parts = rest.split()
        if not parts:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        if math.isnan(value):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


@dataclass(frozen=True)
class SlotsSummary:
    total: int
    busy: int


def summarize_slots(slots: Any) -> SlotsSummary | None:
    if not isinstance(slots, list):
        return None
    busy = sum(1 for s in slots if isinstance(s, dict) and (s.get("is_processing") or s.get("state") == 1))
    return SlotsSummary(total=len(slots), busy=busy)


class Probe:
    """Synchronous probe with one pooled connection set; safe to share within one thread."""

    def __init__(self, timeout: httpx.Timeout = DEFAULT_TIMEOUT, api_key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No keep-alive reuse: llama-server closes idle connections after streams (field notes).
        self._client = httpx.Client(timeout=timeout, headers=headers,
                                    limits=httpx.Limits(max_keepalive_connections=0))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, url: str) -> httpx.Response | None:
        try:
            return self._client.get(url)
        except httpx.HTTPError:
            return None

    def health(self, base: str) -> int | None:
        """HTTP status of /health (200 ready, 503 loading), or None when unreachable."""
        r = self._get(f"{base}/health")
        return r.status_code if r is not None else None

    def ready(self, base: str) -> bool:
        return self.health(base) == 200

    def json(self, base: str, path: str) -> Any:
        r = self._get(f"{base}{path}")
        if r is None or r.status_code != 200:
            return None
        try:
            return orjson.loads(r.content)
        except orjson.JSONDecodeError:
            return None

    def props(self, base: str) -> dict | None:
        data = self.json(base, "/props")
        return data if isinstance(data, dict) else None

    def slots(self, base: str) -> SlotsSummary | None:
        return summarize_slots(self.json(base, "/slots"))

    def metrics(self, base: str) -> dict[str, float] | None:
        r = self._get(f"{base}/metrics")
        if r is None or r.status_code != 200:
            return None
        return parse_prometheus(r.text)


def base_url(host: str, port: int) -> str:
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{h}:{port}"
