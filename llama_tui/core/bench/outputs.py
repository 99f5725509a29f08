"""A benchmark's files: the result as JSON (metadata and steps) and one CSV row per step."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any, Mapping

import orjson

from llama_tui.core import paths
from llama_tui.core.bench.step_result import LATENCIES, QUANTILE_KEYS
from llama_tui.core.errors import UserError

CSV_FIELDS = (["step", "mode", "concurrency", "rate", "duration_s", "api", "stream", "n_predict", "requests_ok",
               "errors", "reconnects", "output_tokens", "output_tok_s", "prompt_tokens", "prompt_tok_s"]
              + [f"{n}_{k}_ms" for n in LATENCIES for k in QUANTILE_KEYS]
              + ["server_output_tokens", "server_output_tok_s", "token_agreement_pct", "cache_n", "workers",
                 "client_cpu_percent", "client_events_s_per_worker", "loop_lag_p99_ms", "valid", "invalid_reason",
                 "latency_valid", "latency_note",
                 "errors_by_class", "per_upstream",
                 "policy", "workload", "n_predict_max", "warmup_s", "cache_n_mean", "cache_hit_pct",
                 "server_rate_basis", "server_rate_agreement_pct"])


def to_csv(result: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for step in result.get("steps", []):
        row = dict(step)
        for k in ("errors_by_class", "per_upstream"):
            row[k] = orjson.dumps(step.get(k) or {}).decode()
        w.writerow(row)
    return buf.getvalue()


def write_outputs(result: Mapping[str, Any], json_path: str | None, csv_path: str | None) -> None:
    for p, data in ((json_path, lambda: orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n"),
                    (csv_path, lambda: to_csv(result).encode())):
        if not p or p == "-":
            continue
        path = Path(p).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data())
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror}", "choose a writable path") from None


def default_result_path() -> Path:
    return paths.ensure_private_dir(paths.state_dir() / "bench") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
