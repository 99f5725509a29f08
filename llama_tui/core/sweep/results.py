"""A sweep's output directory: rows that survive a crash, and what they add up to.

    DIR/results.jsonl   one JSON object per measured cell; each row is written, flushed and fsynced
    DIR/results.csv     the same rows as CSV (rewritten atomically after every row)
    DIR/best.json       the best cell over its repeats (error-free, valid, within the SLO when one is given),
                        the runner-up and whether the two are distinguishable (cells.py)
    DIR/frontier.json   the Pareto frontier of output tok/s against TTFT p95 (cells, over their repeats)
    DIR/metadata.json   model fingerprint, llama-server build, hardware, exact commands

A crash can leave a half-written last line in results.jsonl. Reading ignores it and says so; the
writer moves it to `results.jsonl.damaged` and truncates the file to its last complete row, so the
next row starts on a fresh line. Nothing here is fatal for a damaged file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import orjson

from llama_tui.core import paths

RESULTS = "results.jsonl"
CSV_NAME = "results.csv"
BEST = "best.json"
FRONTIER = "frontier.json"
METADATA = "metadata.json"
DAMAGED = "results.jsonl.damaged"

# Row statuses. "ok" and "error" rows are measured cells; the others are shape-level records
# (concurrency is None) that say why a shape was not measured.
MEASURED = ("ok", "error")
NO_FIT = "no_fit"  # the estimate said it cannot fit: not launched
OOM = "oom"  # launched and failed for memory: recorded, not retried
LAUNCH_FAILED = "launch_failed"  # launched and failed for another reason: retried on --resume

# Coordinates that identify a cell (with the measurement parameters' hash and the model fingerprint).
CELL_COORDS = ("instances", "parallel", "threads", "batch", "ubatch", "n_predict", "concurrency", "repeat")

# results.csv columns, in this order; anything else a row carries follows, sorted.
CSV_COLUMNS = (
    "status", "instances", "parallel", "concurrency", "ctx_per_slot", "threads", "batch", "ubatch", "n_predict",
    "repeat", "output_tok_s", "output_tok_s_mean", "output_tok_s_ci95", "repeats", "rung", "server_output_tok_s",
    "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "itl_p50_ms",
    "itl_p95_ms", "tpot_p50_ms", "e2e_p95_ms", "errors", "requests_ok", "valid", "invalid_reason",
    "rss_peak_bytes", "rss_peak_total_bytes", "gpu_mem_peak_bytes", "gpu_mem_peak_total_bytes",
    "client_cpu_percent", "duration_s", "started_at", "api", "stream", "message", "cell_id", "params_id", "fingerprint",
)

SLO_KEYS = ("ttft_p95_ms", "ttft_p99_ms", "e2e_p95_ms", "itl_p95_ms", "tpot_p50_ms")


# --------------------------------------------------------------------------------------------- SLO


def parse_slo(text: str | Mapping[str, Any] | None) -> dict[str, float]:
    """"ttft_p95_ms=500,e2e_p95_ms=4000" -> {"ttft_p95_ms": 500.0, "e2e_p95_ms": 4000.0}."""
    from llama_tui.core.errors import UserError

    if not text:
        return {}
    items = text.items() if isinstance(text, Mapping) else (
        part.split("=", 1) if "=" in part else (part, None) for part in str(text).split(",") if part.strip())
    out: dict[str, float] = {}
    for key, value in items:
        key = str(key).strip()
        if key not in SLO_KEYS:
            raise UserError(f"unknown SLO key {key!r}", f"use one of {', '.join(SLO_KEYS)}, e.g. ttft_p95_ms=500")
        try:
            v = float(str(value).strip())
        except ValueError:
            raise UserError(f"SLO {key} needs a number of milliseconds, got {value!r}",
                            f"write it as {key}=500") from None
        if not v > 0:
            raise UserError(f"SLO {key} must be positive, got {value!r}", f"write it as {key}=500")
        out[key] = v
    return out


def within_slo(row: Mapping[str, Any], slo: Mapping[str, float] | None) -> bool:
    """A row meets the SLO when every bound it names is known and not exceeded."""
    for key, bound in (slo or {}).items():
        v = row.get(key)
        if not isinstance(v, (int, float)) or v > bound:
            return False
    return True


# --------------------------------------------------------------------------------------------- rows


def is_measured(row: Mapping[str, Any]) -> bool:
    return row.get("status", "ok") in MEASURED and row.get("concurrency") is not None


def is_good(row: Mapping[str, Any]) -> bool:
    """Error-free, valid, measured, with at least one completed request and a throughput figure."""
    return (is_measured(row) and row.get("errors") == 0 and row.get("valid") is True
            and (row.get("requests_ok") or 0) > 0 and isinstance(row.get("output_tok_s"), (int, float)))


def cell_key(row: Mapping[str, Any]) -> tuple:
    return tuple(row.get(k) for k in CELL_COORDS)


def shape_key(row: Mapping[str, Any]) -> tuple:
    return tuple(row.get(k) for k in ("instances", "parallel", "threads", "batch", "ubatch"))


def stable_id(data: Mapping[str, Any]) -> str:
    """A short hash of a mapping, independent of key order."""
    return hashlib.sha256(orjson.dumps(dict(data), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def best_row(rows: Iterable[Mapping[str, Any]], slo: Mapping[str, float] | None = None) -> dict[str, Any] | None:
    """The best cell (cells.py: error-free and valid in every repeat, within the SLO when one is given,
    the highest mean output tok/s) as one row: its means, its 95% interval and its repeats.

    Ties go to the lower TTFT p95, then to the earlier cell."""
    from llama_tui.core.sweep import cells

    top = cells.verdict(cells.from_rows(list(rows), slo)).best
    return top.summary() if top is not None else None


def rank(output_tok_s: float, ttft_p95_ms: Any) -> tuple[float, float]:
    """The order of good cells: higher output tok/s first, then lower TTFT p95 (unknown: last)."""
    ttft = -float(ttft_p95_ms) if isinstance(ttft_p95_ms, (int, float)) else -math.inf
    return (float(output_tok_s), ttft)


def pareto_frontier(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Good cells (over their repeats) not beaten on both axes (higher mean tok/s and lower mean TTFT
    p95), by ascending TTFT p95."""
    from llama_tui.core.sweep import cells

    pts = [c.summary() for c in cells.from_rows(list(rows)) if c.good]
    pts = [r for r in pts if isinstance(r.get("ttft_p95_ms"), (int, float))]
    pts.sort(key=lambda r: (float(r["ttft_p95_ms"]), -float(r["output_tok_s"])))
    out: list[dict[str, Any]] = []
    top = -math.inf
    for r in pts:
        if float(r["output_tok_s"]) > top:
            out.append(dict(r))
            top = float(r["output_tok_s"])
    return out


# --------------------------------------------------------------------------------------------- reading


@dataclass
class Loaded:
    rows: list[dict[str, Any]]
    damaged: list[str] = field(default_factory=list)  # human-readable notes on ignored lines
    good_bytes: int = 0  # length of the file up to the end of its last complete line
    tail: bytes = b""  # a half-written last line (no newline), if any


def read_rows(path: Path) -> Loaded:
    """Every complete, parseable row of a results.jsonl. Damaged lines are skipped and described."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return Loaded([])
    cut = data.rfind(b"\n") + 1
    body, tail = data[:cut], data[cut:]
    out = Loaded([], good_bytes=cut, tail=tail)
    for n, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            out.rows.append(row)
        else:
            out.damaged.append(f"{path.name} line {n}: not a JSON object ({len(line)} bytes), ignored")
    if tail.strip():
        out.damaged.append(f"{path.name}: half-written last line ({len(tail)} bytes, no newline), ignored")
    return out


def read_json(path: Path) -> Any:
    try:
        return orjson.loads(Path(path).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


# --------------------------------------------------------------------------------------------- the store


class ResultStore:
    """Appends rows durably and keeps the CSV mirror, best.json and frontier.json in step."""

    def __init__(self, out_dir: Path, slo: Mapping[str, float] | None = None) -> None:
        self.dir = Path(out_dir)
        self.slo = dict(slo or {})
        self.path = self.dir / RESULTS
        paths.ensure_private_dir(self.dir)
        loaded = read_rows(self.path)
        self.rows: list[dict[str, Any]] = loaded.rows
        self.damaged: list[str] = loaded.damaged
        if loaded.tail:
            self._set_aside_tail(loaded)
        if not self.path.exists():  # an empty file marks a sweep directory from its start (resumable)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        self.refresh()

    def _set_aside_tail(self, loaded: Loaded) -> None:
        """Move a half-written last line to results.jsonl.damaged so the next row starts cleanly."""
        with open(self.dir / DAMAGED, "ab") as f:
            f.write(loaded.tail + b"\n")
            f.flush()
            os.fsync(f.fileno())
        with open(self.path, "r+b") as f:
            f.truncate(loaded.good_bytes)
            f.flush()
            os.fsync(f.fileno())
        self.damaged[-1] += f"; moved to {DAMAGED}"

    def append(self, row: Mapping[str, Any]) -> dict[str, Any]:
        row = dict(row)
        line = orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        self.refresh()
        return row

    def refresh(self) -> None:
        """Rewrite results.csv, best.json and frontier.json from the rows (each atomically)."""
        paths.write_private(self.dir / CSV_NAME, to_csv(self.rows))
        from llama_tui.core.sweep import cells

        paths.write_private(self.dir / BEST, _dumps(cells.best_json(self.rows, self.slo)))
        paths.write_private(self.dir / FRONTIER, _dumps({"x": "ttft_p95_ms", "y": "output_tok_s",
                                                          "frontier": pareto_frontier(self.rows)}))

    def write_metadata(self, meta: Mapping[str, Any]) -> None:
        paths.write_private(self.dir / METADATA, _dumps(meta))

    def metadata(self) -> dict[str, Any] | None:
        meta = read_json(self.dir / METADATA)
        return meta if isinstance(meta, dict) else None


def _dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ";".join("" if x is None else str(x) for x in v)
    if isinstance(v, dict):
        return orjson.dumps(v).decode()
    return v


def to_csv(rows: list[Mapping[str, Any]]) -> str:
    extra = sorted({k for r in rows for k in r} - set(CSV_COLUMNS))
    cols = list(CSV_COLUMNS) + extra
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_csv_value(r.get(c)) for c in cols])
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- fingerprint


FINGERPRINT_CHUNK = 1 << 20


def fingerprint(model: Path, chunk: int = FINGERPRINT_CHUNK) -> dict[str, Any]:
    """Identify a model file cheaply: size, SHA-256 of its first and last MiB, GGUF architecture.

    `id` hashes the rest, so the same file under another path has the same id."""
    model = Path(model)
    size = model.stat().st_size
    with open(model, "rb") as f:
        head = hashlib.sha256(f.read(chunk)).hexdigest()
        f.seek(max(0, size - chunk))
        tail = hashlib.sha256(f.read(chunk)).hexdigest()
    arch = name = None
    try:
        from llama_tui.core.sweep import fit

        facts = fit.read_model_facts(model)
        arch, name = facts.arch, facts.name
    except Exception:  # a GGUF the reader cannot parse still gets a fingerprint
        pass
    fp = {"size": size, "head_sha256": head, "tail_sha256": tail, "arch": arch}
    return {"id": stable_id(fp), **fp, "name": name, "path": str(model.resolve())}
