"""The text report of a sweep directory: the cells (means and 95% intervals over their repeats), the
heatmap, the frontier, the best against the runner-up, where the time went and what to run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from llama_tui.core.errors import UserError
from llama_tui.core.sweep import best, cells, ledger, results

SHADES = " .:-=+*#%@"  # ASCII, so the heatmap survives any terminal and SSH link


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def _mib(v: Any) -> str:
    return "n/a" if not isinstance(v, (int, float)) else f"{v / (1 << 20):,.0f}"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 0) -> list[str]:
    """Columns padded to fit; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    out = []
    for r in [header, *rows]:
        cells = [str(x).ljust(w) if i < left else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def heatmap(rows: Sequence[Mapping[str, Any]], slo: Mapping[str, float] | None = None) -> list[str]:
    """Best good output tok/s by instances (rows) x parallel (columns), shaded by share of the best.
    The grid is best.grid_from_rows: the rule the TUI's heatmap widget renders from its live points."""
    grid = best.grid_from_rows(rows, slo)
    top = grid.top or 0.0
    table = []
    for i in grid.instances:
        line = [f"{i} inst"]
        for p in grid.parallel:
            cell = grid.cell(i, p)
            if cell is None or cell.tok_s is None:
                line.append((cell.note if cell is not None else None) or "-")
            else:
                v = cell.tok_s
                shade = SHADES[min(len(SHADES) - 1, int(v / top * (len(SHADES) - 1)))] if top > 0 else " "
                line.append(f"{v:,.0f} {shade * 3}{' <' if cell.best else '  '}")
        table.append(line)
    return render_table(["", *[f"par {p}" for p in grid.parallel]], table, left=1)


def recommended_command(top: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """`llama-tui fleet up ...` with the fleet settings of the best row `top`."""
    import shlex

    cmd = ["llama-tui", "fleet", "up"]
    for key, value in best.fleet_settings_for(top, meta).items():
        value = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        cmd += [f"--{key.split('.', 1)[1].replace('_', '-')}", value]
    return shlex.join(cmd)


def load(out_dir: Path | str) -> tuple[results.Loaded, dict[str, Any]]:
    """A sweep directory's rows and metadata; UserError when it holds no results."""
    out = Path(out_dir)
    if not (out / results.RESULTS).is_file():
        raise UserError(f"{out} holds no sweep results (no {results.RESULTS})",
                        "pass the --out directory of a sweep (see `llama-tui sweep --help`)")
    return results.read_rows(out / results.RESULTS), results.read_json(out / results.METADATA) or {}


def _valid(r: Mapping[str, Any]) -> str:
    """"yes", "no", or "2/3" when only some repeats were valid."""
    n, ok = r.get("repeats") or 1, r.get("valid_repeats")
    return _fmt(r.get("valid")) if ok is None or ok in (0, n) else f"{ok}/{n}"


def ci_text(ci: Sequence[float] | None) -> str:
    def whole(v: float) -> str:
        text = f"{v:,.0f}"
        return "0" if text == "-0" else text

    return "n/a" if not ci else f"{whole(ci[0])} to {whole(ci[1])}"


def shape_text(r: Mapping[str, Any]) -> str:
    t = r.get("threads")
    return f"{r['instances']} instances x {r['parallel']} slots, {t} thread{'' if t == 1 else 's'}"


def cell_text(r: Mapping[str, Any]) -> str:
    """"1,234 tok/s (95% CI 1,200-1,260 over 3 repeats)" for a cell summary."""
    ci = r.get("output_tok_s_ci95")
    n = r.get("repeats") or 1
    spread = f"95% CI {ci_text(ci)} over {n} repeats" if ci else f"{n} repeat{'' if n == 1 else 's'}, no interval"
    return f"{_fmt(r.get('output_tok_s'))} tok/s ({spread})"


def verdict_lines(rows: Sequence[Mapping[str, Any]], slo: Mapping[str, float] | None, mode: str,
                  meta: Mapping[str, Any]) -> list[str]:
    """The best cell against the runner-up, and the command that starts the best shape."""
    v = cells.verdict(cells.from_rows(rows, slo))
    if v.best is None:
        return ["no error-free, valid cell" + (" within the SLO" if slo else "") + ": nothing to recommend"]
    top = v.best.summary()
    lines = [f"best: {shape_text(top)}, at concurrency {top['concurrency']}: {cell_text(top)} ({mode}), "
             f"TTFT p95 {_fmt(top.get('ttft_p95_ms'), 1)} ms, E2E p95 {_fmt(top.get('e2e_p95_ms'), 1)} ms"]
    if v.runner_up is not None:
        ru = v.runner_up.summary()
        lines.append(f"runner-up: {shape_text(ru)}, at concurrency {ru['concurrency']}: {cell_text(ru)}")
    lines += [v.reason, "run it with:", "  " + recommended_command(top, meta)]
    return lines


def report(out_dir: Path | str) -> str:
    """The cells, a heatmap of best tok/s by instances x parallel, the frontier, the best against the
    runner-up, the time account and what to run."""
    out = Path(out_dir)
    loaded, meta = load(out)
    rows = loaded.rows
    slo = meta.get("slo") or {}
    fp = meta.get("fingerprint") or {}
    params = meta.get("params") or {}
    mode = "streamed" if params.get("stream", True) else "non-streamed"
    measured = [r for r in rows if results.is_measured(r)]
    found = cells.from_rows(rows, slo)
    lines = [f"sweep {out}",
             f"model: {fp.get('path', 'n/a')} ({fp.get('arch') or 'n/a'}, fingerprint {fp.get('id', 'n/a')})",
             f"llama-server: {(meta.get('llama_server') or {}).get('version') or 'n/a'}, "
             f"build_info {(meta.get('llama_server') or {}).get('build_info') or 'n/a'}",
             f"cells: {len(measured)} measured ({len(found)} distinct, repeats per cell: "
             f"{', '.join(str(n) for n in sorted({c.repeats for c in found})) or 'none'}), "
             f"{len(rows) - len(measured)} shape records; "
             f"duration {_fmt(params.get('duration'), 1)} s per cell, warm-up {_fmt(params.get('warmup'), 1)} s; "
             f"SLO: {', '.join(f'{k} <= {v:g}' for k, v in slo.items()) or 'none'}; tok/s are {mode} output tokens"]
    for note in loaded.damaged:
        lines.append(f"warning: {note}")
    show_b = any(r.get("batch") is not None for r in rows)
    show_ub = any(r.get("ubatch") is not None for r in rows)
    show_np = len({r.get("n_predict") for r in measured}) > 1
    header = ["status", "inst", "par", "thr"] + (["batch"] if show_b else []) + (["ubatch"] if show_ub else []) + (
        ["n_pred"] if show_np else []) + ["conc", "rep", "tok/s", "95% CI", "srv tok/s", "ttft p50", "ttft p95",
                                          "ttft p99", "itl p50", "e2e p95", "err", "ok", "valid", "rss MiB"]
    table = []
    shape_records = [r for r in rows if not results.is_measured(r)]
    for r in sorted([c.summary() for c in found] + shape_records, key=lambda r: tuple((v is None, v) for v in (
            r.get("instances"), r.get("parallel"), r.get("threads"), r.get("batch"), r.get("ubatch"),
            r.get("n_predict"), r.get("concurrency")))):
        measured_cell = results.is_measured(r)
        status = str(r.get("status", "ok"))
        if measured_cell:
            status = "error" if r.get("errors") else "ok"
        line = [status, _fmt(r.get("instances")), _fmt(r.get("parallel")), _fmt(r.get("threads"))]
        line += [_fmt(r.get("batch"))] if show_b else []
        line += [_fmt(r.get("ubatch"))] if show_ub else []
        line += [_fmt(r.get("n_predict"))] if show_np else []
        if measured_cell:
            line += [_fmt(r.get("concurrency")), _fmt(r.get("repeats") or 1), _fmt(r.get("output_tok_s")),
                     ci_text(r.get("output_tok_s_ci95")), _fmt(r.get("server_output_tok_s")),
                     _fmt(r.get("ttft_p50_ms"), 1), _fmt(r.get("ttft_p95_ms"), 1), _fmt(r.get("ttft_p99_ms"), 1),
                     _fmt(r.get("itl_p50_ms"), 2), _fmt(r.get("e2e_p95_ms"), 1), _fmt(r.get("errors")),
                     _fmt(r.get("requests_ok")), _valid(r), _mib(r.get("rss_peak_total_bytes"))]
        else:
            line += ["-"] * 13 + [""]
            line[-1] = str(r.get("message") or "")[:60]
        table.append(line)
    lines += ["", *render_table(header, table, left=1)]
    lines += ["", f"best output tok/s by instances x parallel ({mode}; '<' marks the best; shade ' ' low .. '@' high):",
              *heatmap(rows, slo)]
    front = results.pareto_frontier(rows)
    lines += ["", "frontier (mean output tok/s against mean TTFT p95 of each cell; nothing else is both faster and "
                  "quicker to first token):"]
    lines += render_table(["ttft p95 ms", "tok/s", "shape", "conc"],
                          [[_fmt(r.get("ttft_p95_ms"), 1), _fmt(r.get("output_tok_s")),
                            f"{r.get('instances')}x{r.get('parallel')} t{r.get('threads')}", _fmt(r.get("concurrency"))]
                           for r in front]) if front else ["  (no error-free cells)"]
    lines += ["", *verdict_lines(rows, slo, mode, meta)]
    spent = meta.get("time") or ledger.total([r.get("time") for r in meta.get("runs") or []])
    lines += ["", "time: " + (ledger.summary_line(spent) if spent else
                              "not recorded (a sweep from before the time account)")]
    lines.append(f"intervals: {cells.CI_METHOD}")
    return "\n".join(lines) + "\n"
