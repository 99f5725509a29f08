"""A sweep directory as one self-contained HTML page, to attach to an issue or a blog post.

`sweep report DIR --html FILE`. The page holds everything itself: inline CSS, inline SVG charts
(charts.py), no scripts, no fonts, images or styles fetched from anywhere. It shows the best shape and
the command that starts it, the best against the runner-up (cells.py), the heatmap, tok/s against
concurrency per shape with the 95% intervals, the TTFT/tok/s frontier, where the time went, every cell,
and the run's metadata (model, llama-server build, hardware, commands).
"""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import Any, Mapping, Sequence

from llama_tui.core import paths
from llama_tui.core.sweep import best, cells, charts, ledger, report, results

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1a1a1a;
       max-width: 1000px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 30px 0 8px; border-bottom: 1px solid #e5e5e5; padding-bottom: 4px; }
.sub { color: #555; margin: 0 0 12px; }
.headline { display: flex; gap: 28px; align-items: baseline; flex-wrap: wrap; }
.big { font-size: 34px; font-weight: 700; color: #1f4e8c; }
.ci { color: #555; }
.verdict { padding: 8px 12px; border-radius: 6px; margin: 10px 0; }
.verdict.yes { background: #eaf6ea; border: 1px solid #9fd19f; }
.verdict.no { background: #fff4e0; border: 1px solid #f0c36d; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 6px; padding: 10px 12px; overflow-x: auto;
      white-space: pre-wrap; word-break: break-all; font-size: 12.5px; }
table { border-collapse: collapse; font-size: 12.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 9px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th { background: #fafafa; position: sticky; top: 0; }
td.l, th.l { text-align: left; }
tr.best td { background: #fdecea; font-weight: 600; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 0; }
dt { color: #555; } dd { margin: 0; word-break: break-all; }
svg { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.note { color: #666; font-size: 12.5px; }
"""


def _e(v: Any) -> str:
    return escape("n/a" if v is None else str(v), quote=True)


def _n(v: Any, digits: int = 0) -> str:
    return _e(report._fmt(v, digits))


def _size(n: Any) -> str | None:
    if not isinstance(n, (int, float)):
        return None
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def _shape_label(r: Mapping[str, Any]) -> str:
    return f"{r.get('instances')}x{r.get('parallel')} t{r.get('threads')}" + "".join(
        f" {tag}{r[k]}" for k, tag in (("batch", "b"), ("ubatch", "ub")) if r.get(k) is not None)


def ramp_series(found: Sequence[cells.Cell]) -> list[charts.Series]:
    """tok/s against concurrency: one series per shape (and n_predict, when several) of good cells."""
    many_n = len({c.members[0].get("n_predict") for c in found}) > 1
    by_name: dict[str, list[tuple[float, float, tuple[float, float] | None]]] = {}
    for c in found:
        r = c.members[0]
        if not c.good or c.tok_s is None:
            continue
        name = _shape_label(r) + (f" n{r.get('n_predict')}" if many_n else "")
        by_name.setdefault(name, []).append((float(r["concurrency"]), c.tok_s, c.ci95))
    return [charts.Series(name, tuple(sorted(pts))) for name, pts in sorted(by_name.items())]


def _best_section(found: Sequence[cells.Cell], slo: Mapping[str, float], meta: Mapping[str, Any], mode: str) -> str:
    v = cells.verdict(found)
    if v.best is None:
        return ('<section id="best"><h2>Best shape</h2><p>No error-free, valid cell'
                f'{" within the SLO" if slo else ""}: nothing to recommend.</p></section>')
    top = v.best.summary()
    ci = top.get("output_tok_s_ci95")
    ci_t = (f"95% interval {_n(ci[0])} to {_n(ci[1])} over {top['repeats']} repeats" if ci else
            f"{top.get('repeats', 1)} repeat, no interval")
    out = ['<section id="best"><h2>Best shape</h2><div class="headline">',
           f'<div><div class="big">{_n(top.get("output_tok_s"))} tok/s</div>'
           f'<div class="ci">{ci_t} · {_e(mode)}</div></div>',
           f'<div><b>{_e(report.shape_text(top))}</b>, at concurrency {_n(top.get("concurrency"))}<br>'
           f'TTFT p95 {_n(top.get("ttft_p95_ms"), 1)} ms · E2E p95 {_n(top.get("e2e_p95_ms"), 1)} ms</div></div>']
    if v.runner_up is not None:
        ru = v.runner_up.summary()
        out.append(f'<p>Runner-up: {_e(report.shape_text(ru))}, at concurrency {_n(ru.get("concurrency"))}: '
                   f'{_e(report.cell_text(ru))}.</p>')
    klass = "yes" if v.distinguishable else "no"
    out.append(f'<p class="verdict {klass}">{_e(v.reason)}</p>')
    out.append(f'<p>Start it with:</p><pre><code>{_e(report.recommended_command(top, meta))}</code></pre></section>')
    return "\n".join(out)


def _cells_table(found: Sequence[cells.Cell], top: cells.Cell | None) -> str:
    head = ["shape", "n_predict", "conc", "repeats", "tok/s", "95% CI", "TTFT p50 ms", "TTFT p95 ms", "E2E p95 ms",
            "errors", "valid", "good"]
    rows = []
    for c in sorted(found, key=lambda c: tuple((v is None, v) for v in (*c.shape, c.members[0].get("n_predict"),
                                                                          c.members[0].get("concurrency")))):
        s = c.summary()
        klass = ' class="best"' if c is top else ""
        rows.append(f'<tr{klass}><td class="l">{_e(_shape_label(s))}</td><td>{_n(s.get("n_predict"))}</td>'
                    f'<td>{_n(s.get("concurrency"))}</td><td>{c.repeats}</td><td>{_n(s.get("output_tok_s"))}</td>'
                    f'<td>{_e(report.ci_text(s.get("output_tok_s_ci95")))}</td><td>{_n(s.get("ttft_p50_ms"), 1)}</td>'
                    f'<td>{_n(s.get("ttft_p95_ms"), 1)}</td><td>{_n(s.get("e2e_p95_ms"), 1)}</td>'
                    f'<td>{_n(s.get("errors"))}</td><td>{_e(report._valid(s))}</td>'
                    f'<td>{"yes" if c.good else "no"}</td></tr>')
    return ('<table><thead><tr>' + "".join(f'<th{" class=l" if h == "shape" else ""}>{_e(h)}</th>' for h in head)
            + '</tr></thead><tbody>' + "\n".join(rows) + "</tbody></table>")


def _time_section(meta: Mapping[str, Any]) -> str:
    spent = meta.get("time") or ledger.total([r.get("time") for r in meta.get("runs") or []])
    if not spent:
        return '<section id="time"><h2>Where the time went</h2><p>Not recorded (a sweep from before the time ' \
               'account).</p></section>'
    parts = [(label, s) for label, s, _, _ in ledger.breakdown(spent) if s > 0]
    table = "".join(f'<tr><td class="l">{_e(label)}</td><td>{_e(ledger.duration(s))}</td><td>{share:.0%}</td>'
                    f'<td class="l">{_e(note)}</td></tr>' for label, s, share, note in ledger.breakdown(spent))
    return (f'<section id="time"><h2>Where the time went</h2><p>{_e(ledger.summary_line(spent))}</p>'
            f'{charts.stacked_bar(parts)}<table><tbody>{table}</tbody></table></section>')


def _meta_section(meta: Mapping[str, Any]) -> str:
    fp, ls, hw = meta.get("fingerprint") or {}, meta.get("llama_server") or {}, meta.get("hardware") or {}
    params = meta.get("params") or {}
    gpus = ", ".join(str(g.get("name")) for g in hw.get("gpus") or []) or "none"
    mem = hw.get("memory_total_bytes")
    items = [("model", fp.get("path")), ("model name", fp.get("name")), ("architecture", fp.get("arch")),
             ("model size", _size(fp.get("size"))),
             ("fingerprint", fp.get("id")), ("llama-server", ls.get("version")), ("build", ls.get("build_info")),
             ("CPU", hw.get("cpu")),
             ("cores", f"{hw.get('physical_cores')} physical / {hw.get('logical_cores')} logical"),
             ("memory", f"{mem / (1 << 30):,.1f} GiB" if mem else None), ("GPUs", gpus),
             ("window", f"{params.get('duration')} s after {params.get('warmup')} s of warm-up"),
             ("requests", f"{params.get('api')}, {'streamed' if params.get('stream', True) else 'not streamed'}, "
                          f"~{params.get('prompt_tokens')} prompt tokens"),
             ("context per slot", params.get("ctx_per_slot")), ("policy", params.get("policy")),
             ("SLO", ", ".join(f"{k} <= {v:g}" for k, v in (meta.get("slo") or {}).items()) or "none")]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    runs = "".join(f'<li>{_e(r.get("started_at"))}: <code>{_e(" ".join(r.get("command") or []))}</code></li>'
                   for r in meta.get("runs") or [])
    return f'<section id="run"><h2>Run</h2><dl>{dl}</dl><p>Runs:</p><ul>{runs}</ul></section>'


def render(out_dir: Path | str) -> str:
    """The page for a sweep directory (UserError when it holds no results)."""
    out = Path(out_dir)
    loaded, meta = report.load(out)
    rows, slo = loaded.rows, meta.get("slo") or {}
    params = meta.get("params") or {}
    mode = "streamed" if params.get("stream", True) else "non-streamed"
    found = cells.from_rows(rows, slo)
    fp = meta.get("fingerprint") or {}
    model = fp.get("name") or Path(str(fp.get("path") or "model")).name
    title = f"llama-tui sweep: {model}"
    good = [c for c in found if c.good and c.tok_s is not None and c.ttft_p95_ms is not None]
    scatter_pts = [(c.ttft_p95_ms or 0.0, c.tok_s or 0.0,
                    f"{_shape_label(c.members[0])} c={c.members[0].get('concurrency')}") for c in good]
    front = [(float(r["ttft_p95_ms"]), float(r["output_tok_s"]), f"{_shape_label(r)} c={r.get('concurrency')}")
             for r in results.pareto_frontier(rows)]
    series = ramp_series(found)
    body = [f"<header><h1>{_e(title)}</h1><p class=\"sub\">{_e(out)} · {len(found)} cells from "
            f"{sum(c.repeats for c in found)} measurements · tok/s are {mode} output tokens · "
            f"page written {_e(time.strftime('%Y-%m-%d %H:%M'))}</p></header>",
            _best_section(found, slo, meta, mode),
            '<section id="heatmap"><h2>Best tok/s by instances x parallel</h2><p class="note">The best good cell '
            'of each shape (mean over its repeats, 95% interval in small print); ★ and the red outline mark the '
            'best shape; darker is faster.</p>' + charts.heatmap(best.grid_from_rows(rows, slo)) + "</section>",
            '<section id="ramps"><h2>Output tok/s against concurrency</h2><p class="note">One line per shape (good '
            'cells only); bars are 95% intervals over the repeats.</p>' + charts.lines(series) + "</section>",
            '<section id="frontier"><h2>TTFT against throughput</h2><p class="note">Every good cell; the red line '
            'is the frontier: nothing else is both faster and quicker to the first token.</p>'
            + charts.scatter(scatter_pts, front) + "</section>",
            _time_section(meta),
            '<section id="cells"><h2>Cells</h2>' + _cells_table(found, cells.verdict(found).best) + "</section>",
            _meta_section(meta),
            f'<footer><p class="note">Intervals: {_e(cells.CI_METHOD)}. Written by llama-tui; this page loads '
            "nothing from the network.</p></footer>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")


def write_page(out_dir: Path | str, path: Path | str) -> Path:
    """Write the page for `out_dir` to `path` (atomically); returns the path."""
    path = Path(path)
    paths.write_private(path, render(out_dir))
    return path
