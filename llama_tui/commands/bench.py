"""`llama-tui bench`: streaming load against a fleet (or any llama-server), with honest numbers."""

from __future__ import annotations

import argparse
import sys
import textwrap
import threading
from typing import Any

from llama_tui.commands.fleet import warn_api_key_argv
from llama_tui.commands.output import info, print_json
from llama_tui.core.bench.definitions import DEFINITIONS
from llama_tui.core.config import DAY_S, seconds_arg

# CLI option -> settings key (preset [bench] table and LLAMA_TUI_BENCH_* fill in the rest).
SETTINGS_OPTIONS = {
    "api": "bench.api",
    "duration": "bench.duration",
    "warmup": "bench.warmup",
    "prompt_tokens": "bench.prompt_tokens",
}

_DEFINED = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "output_tok_s", "latency_population", "server_output_tok_s",
            "cache_n", "warmup", "errors_by_class", "valid")


def _epilog() -> str:
    lines = ["definitions (also written into every JSON result's metadata):"]
    for key in _DEFINED:
        lines.extend(textwrap.wrap(f"{key}: {DEFINITIONS[key]}", width=96, initial_indent="  ",
                                   subsequent_indent="      "))
    lines += ["", "examples:",
              "  llama-tui bench --concurrency 1,2,4,8 --json out.json      # the running fleet's NGINX",
              "  llama-tui bench --url http://127.0.0.1:18000 --ramp",
              "  llama-tui bench --url http://127.0.0.1:18080 --rate 5 --duration 30",
              "  llama-tui bench --workload shared-prefix --prefix-tokens 256 --prefix-groups 2 --concurrency 4",
              "  llama-tui bench --workload sessions --sessions 8 --turns 4 --policies least_conn,hash",
              "  llama-tui bench --workload dataset:prompts.jsonl --n-predict 64:512 --seed 1",
              "  llama-tui bench --calibrate                                # the client's own ceiling"]
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="streaming load: tok/s, TTFT/ITL/TPOT/E2E percentiles, checked against the servers' counters",
        description="Load a fleet (its NGINX by default) or any llama-server with streaming requests, one "
        "steady-state window per step (warm-up excluded), and report throughput and latency percentiles, "
        "cross-checked against llamacpp:tokens_predicted_total, with the client's own CPU and whether it "
        "was the bottleneck.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    t = p.add_argument_group("target")
    t.add_argument("--url", action="append", metavar="URL",
                   help="where to send load; repeat for client-side round-robin (default: the running fleet's NGINX)")
    t.add_argument("--server-url", dest="server_url", action="append", metavar="URL",
                   help="a llama-server whose /metrics to read (repeatable; default: the fleet's instances, or the "
                   "target itself when it is a llama-server)")
    t.add_argument("--api", choices=("completion", "chat"),
                   help="completion: native /completion (default); chat: /v1/chat/completions with usage")
    t.add_argument("--api-key", dest="api_key", metavar="KEY",
                   help="sent as Authorization: Bearer KEY (visible in `ps`: prefer --api-key-file)")
    t.add_argument("--api-key-file", dest="api_key_file", metavar="FILE", help="file whose first line is the API key")
    t.add_argument("--preset", help="preset whose [bench] table gives the defaults")
    t.add_argument("--policies", metavar="P,P...",
                   help="policy A/B: run the same workload and seed once per NGINX policy on the running fleet "
                   "(reloading NGINX between them, its policy restored afterwards) and print them side by side")
    shape = p.add_argument_group("load shape")
    shape.add_argument("--concurrency", metavar="LIST", help="closed loop, one step per value, e.g. 1,2,4,8")
    shape.add_argument("--ramp", action="store_true",
                       help="double concurrency (from the first --concurrency value, else 1) until tok/s gains < 3%%")
    shape.add_argument("--rate", metavar="R[,R...]",
                       help="open loop (instead of the above): Poisson arrivals per second, one step per value; "
                       "latency counts from the intended send time")
    shape.add_argument("--max-concurrency", dest="max_concurrency", type=int, metavar="N",
                       help="where --ramp stops (default 1024)")
    tm = p.add_argument_group("timing")
    tm.add_argument("--duration", metavar="S", help="measured seconds per step (default 10)")
    tm.add_argument("--warmup", metavar="S", help="seconds of load before each window, excluded (default 2; longer "
                    "until the load is steady: in flight at the concurrency and a request lifetime passed)")
    tm.add_argument("--max-window", dest="max_window", type=seconds_arg(0.1, DAY_S), metavar="S",
                    help="how long a window may stretch to hold 3 request lifetimes (default 4 x --duration; "
                    "--duration's value keeps windows fixed)")
    tm.add_argument("--timeout", type=seconds_arg(0.1, DAY_S), metavar="S",
                    help="a request that receives nothing for this long is a timeout (default 120)")
    tm.add_argument("--drain", type=seconds_arg(0, 3600), metavar="S",
                    help="open loop: how long requests sent inside the window may take to finish (default 60)")
    rq = p.add_argument_group("requests")
    rq.add_argument("--n-predict", dest="n_predict", metavar="N|MIN:MAX",
                    help="tokens per request (default 128), or drawn uniformly from MIN:MAX per request")
    rq.add_argument("--workload", metavar="NAME",
                    help="unique (default: a unique nonce per request), shared-prefix (G agents' system prompts "
                    "of S tokens, plus a unique user part), sessions (N multi-turn conversations of T turns, "
                    "each turn carrying its history), or dataset:FILE (JSONL of prompts, chat messages or "
                    "ShareGPT conversations, drawn with --seed); all but unique send cache_prompt and, for "
                    "shared-prefix and sessions, X-Session-Id")
    rq.add_argument("--prefix-tokens", dest="prefix_tokens", type=int, metavar="S",
                    help="shared-prefix: tokens of each system prompt (default 512)")
    rq.add_argument("--prefix-groups", dest="prefix_groups", type=int, metavar="G",
                    help="shared-prefix: how many distinct system prompts (agents; default 4)")
    rq.add_argument("--sessions", type=int, metavar="N",
                    help="sessions: conversations (default: the largest concurrency; at least that)")
    rq.add_argument("--turns", type=int, metavar="T", help="sessions: turns per conversation (default 4)")
    pr = rq.add_mutually_exclusive_group()
    pr.add_argument("--prompt", metavar="TEXT", help="the prompt")
    pr.add_argument("--prompt-file", dest="prompt_file", metavar="FILE", help="read the prompt from FILE")
    pr.add_argument("--prompt-tokens", dest="prompt_tokens", metavar="N",
                    help="generate a prompt of about N tokens (sized with the server's /tokenize; default 32)")
    rq.add_argument("--cache-prompt", dest="cache_prompt", action="store_true",
                    help="send the same prompt with cache_prompt: true to measure prompt-cache reuse "
                    "(default: a unique nonce per request so the cache is not hit)")
    rq.add_argument("--no-stream", dest="no_stream", action="store_true",
                    help="non-streaming requests, tokens from timings (no TTFT/ITL); like-for-like with "
                    "non-streaming tools")
    rq.add_argument("--no-ignore-eos", dest="no_ignore_eos", action="store_true",
                    help="let requests stop at end-of-sequence (default: ignore_eos, fixed-length output)")
    rq.add_argument("--seed", type=int, help="seed for arrivals and nonces (recorded)")
    cl = p.add_argument_group("client")
    cl.add_argument("--workers", metavar="N|auto",
                    help="load-generator processes (default auto: one per 128 streams, at most half the cores)")
    cl.add_argument("--calibrate", action="store_true",
                    help="measure this client's ceiling on a built-in loopback SSE source and exit")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write metadata and steps as JSON (- for stdout)")
    out.add_argument("--csv", metavar="FILE", help="write one row per step as CSV")
    p.set_defaults(func=run_bench)


def _workers(value: str | None) -> int | None:
    from llama_tui.core.errors import UserError

    if value is None or value.strip().lower() == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        raise UserError(f"--workers must be a number or auto, got {value!r}", "e.g. --workers 2") from None
    if n < 1:
        raise UserError(f"--workers must be >= 1, got {n}", "e.g. --workers 2")
    return n


def _default_url() -> str:
    from llama_tui.core import bench
    from llama_tui.core.errors import UserError

    st = bench.fleet_state(None)
    url = None
    if st is not None:
        try:
            url = st.nginx_url() or (st.instance_urls() or [None])[0]
        except Exception:
            url = None
    if not url:
        raise UserError("no --url and no running fleet", "start one with `llama-tui fleet up`, or pass "
                        "--url http://HOST:PORT")
    return url


def build_config(args: argparse.Namespace):
    from llama_tui.core import bench, config
    from llama_tui.core.errors import UserError

    if args.rate is not None and (args.ramp or args.concurrency is not None):
        raise UserError("--rate (open loop) cannot be combined with --concurrency or --ramp (closed loop)",
                        "pick one load shape")

    cli = {key: getattr(args, opt, None) for opt, key in SETTINGS_OPTIONS.items()}
    n_max = None
    if args.n_predict is not None:
        cli["bench.n_predict"], n_max = bench.parse_n_predict(args.n_predict)
    workload, dataset = bench.parse_workload(args.workload) if args.workload is not None else ("unique", None)
    if args.no_stream:
        cli["bench.stream"] = False
    if args.concurrency is not None:
        cli["bench.concurrency"] = config.parse_int_list(args.concurrency, "--concurrency list")
    settings = config.load_settings(preset=args.preset, cli=cli)
    urls = tuple(args.url) if args.url else (_default_url(),)
    overrides: dict[str, Any] = {
        "urls": urls, "server_urls": tuple(args.server_url or ()), "ramp": bool(args.ramp),
        "rates": bench.parse_rates(args.rate) if args.rate is not None else (),
        "prompt": args.prompt, "prompt_file": args.prompt_file, "cache_prompt": bool(args.cache_prompt),
        "ignore_eos": not args.no_ignore_eos, "workers": _workers(args.workers), "api_key": _api_key(args),
        "timeout": args.timeout, "drain": args.drain, "max_concurrency": args.max_concurrency, "seed": args.seed,
        "workload": workload, "dataset": dataset, "n_predict_max": n_max, "prefix_tokens": args.prefix_tokens,
        "prefix_groups": args.prefix_groups, "sessions": args.sessions, "turns": args.turns,
        "max_window": args.max_window,
    }
    if args.ramp and args.concurrency is None:
        overrides["concurrency"] = (1,)
    return bench.BenchConfig.from_settings(settings, **overrides).validated()


def _api_key(args: argparse.Namespace) -> str | None:
    from llama_tui.core.fleet.frontdoor_rules import read_key_file

    if args.api_key is None and getattr(args, "api_key_file", None):
        return read_key_file(args.api_key_file)
    return args.api_key


class _LiveLine:
    """A live line on a TTY (rewritten in place), plain lines otherwise; both on stderr."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.width = 0

    def sample(self, s: Any) -> None:
        load = f"c={s.concurrency}" if s.concurrency is not None else f"rate={s.rate:g}/s"
        of = f"/{s.steps_total}" if s.steps_total else ""
        ttft = f"{s.ttft_p50_ms:.1f} ms" if s.ttft_p50_ms is not None else "n/a"
        text = (f"step {s.step + 1}{of} {load} {s.phase:<7} {s.step_elapsed_s or 0:5.1f}/{s.step_duration_s or 0:.1f}s "
                f"{s.tok_s:9,.0f} tok/s  in flight {s.inflight:4d}  done {s.requests_done:6d}  "
                f"TTFT p50 {ttft}  errors {s.errors}")
        if self.tty:
            pad = max(0, self.width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            sys.stderr.flush()
            self.width = len(text)
        else:
            info(text)

    def step(self, st: dict[str, Any]) -> None:
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            self.width = 0
        info(summary_line(st))


def _fmt(v: Any, spec: str = ",.0f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "n/a"


def summary_line(st: dict[str, Any]) -> str:
    load = f"c={st['concurrency']}" if st["mode"] == "closed" else f"rate={st['rate']:g}/s"
    valid = "valid" if st["valid"] else f"INVALID ({st['invalid_reason']})"
    if st.get("latency_note"):
        valid += f"; latency: {st['latency_note']}"
    policy = f"[{st['policy']}] " if st.get("policy") else ""
    return (f"{policy}step {st['step'] + 1} {load}: {_fmt(st['output_tok_s'])} tok/s (server "
            f"{_fmt(st['server_output_tok_s'])}), prompt {_fmt(st.get('prompt_tok_s'))} tok/s, cache_n mean "
            f"{_fmt(st.get('cache_n_mean'))}, "
            f"TTFT p50 {_fmt(st['ttft_p50_ms'], '.1f')} ms, E2E p50 {_fmt(st['e2e_p50_ms'], '.1f')} ms, "
            f"{st['requests_ok']} ok, {st['errors']} errors, client CPU {_fmt(st['client_cpu_percent'], '.0f')}%, {valid}")


def table(result: dict[str, Any]) -> str:
    head = ("load", "tok/s", "server tok/s", "prompt tok/s", "cache_n", "TTFT p50", "TTFT p99", "ITL p50", "E2E p50",
            "ok", "errors", "client CPU", "valid")
    rows = [head]
    for st in result["steps"]:
        rows.append((
            f"c={st['concurrency']}" if st["mode"] == "closed" else f"{st['rate']:g}/s",
            _fmt(st["output_tok_s"]), _fmt(st["server_output_tok_s"]), _fmt(st.get("prompt_tok_s")),
            _fmt(st.get("cache_n_mean")), _fmt(st["ttft_p50_ms"], ".1f"),
            _fmt(st["ttft_p99_ms"], ".1f"), _fmt(st["itl_p50_ms"], ".2f"), _fmt(st["e2e_p50_ms"], ".1f"),
            str(st["requests_ok"]), str(st["errors"]), _fmt(st["client_cpu_percent"], ".0f") + "%",
            ("yes" if st["valid"] else "NO") + ("" if st.get("latency_valid", True) else "*")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i]) for i, c in enumerate(r)) for r in rows]
    lines.extend(_notes(result))
    for st in result["steps"]:
        if not st["valid"]:
            lines.append(f"NO  step {st['step'] + 1}: {st['invalid_reason']}")
        if st.get("latency_note"):
            lines.append(f"*   step {st['step'] + 1}: {st['latency_note']}")
        if st.get("window_note"):
            lines.append(f"~   step {st['step'] + 1}: {st['window_note']}")
    return "\n".join(lines)


def _notes(result: dict[str, Any]) -> list[str]:
    """What the table's figures are: the workload, the output length, the server column's basis."""
    meta = result["metadata"]
    n = meta["n_predict"] if not meta.get("n_predict_max") else f"{meta['n_predict']}:{meta['n_predict_max']}"
    wl = (meta.get("workload") or {}).get("name", "unique")
    lines = [f"({meta['streaming']}, api {meta['api']}, workload {wl}, n_predict {n}, latencies in ms; cache_n: "
             f"prompt tokens from the cache per request; definitions: llama-tui bench --help)"]
    swa = meta.get("model_sliding_window")
    low = [st for st in result["steps"] if (st.get("cache_hit_pct") or 0) < 20]
    if swa and wl in ("shared-prefix", "sessions") and low:
        lines.append(f"cache_n is low and the model attends through a sliding window ({swa} tokens): llama-server "
                     "then reuses a cached prompt only up to the checkpoint near the end of the last one; start the "
                     "fleet with --extra-args=--swa-full to reuse shared prefixes")
    bases = {st.get("server_rate_basis") for st in result["steps"]} - {None}
    if "completions" in bases:
        lines.append("server tok/s here counts completed requests only (no /slots to read in-flight tokens), "
                     "so it moves in steps of whole requests: compare it over the whole step "
                     "(token_agreement_pct), not per window")
    return lines


def ab_table(result: dict[str, Any]) -> str:
    """The policies side by side, one block of figures per load step."""
    from llama_tui.core.bench.policy_ab import COMPARED

    policies = result["policies"]
    rows = [("load", "figure", *policies)]
    for block in result["comparison"]:
        for i, (key, label) in enumerate(COMPARED):
            cells = []
            for p in policies:
                fig = (block["policies"].get(p) or {}).get(key)
                spec = ".1f" if key.endswith("_ms") or key.endswith("_pct") else ",.1f" if key.endswith("_s") else ",.0f"
                cells.append(("yes" if fig else "NO") if key == "valid" and fig is not None else _fmt(fig, spec))
            rows.append((block["load"] if i == 0 else "", label, *cells))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(widths[i]) if i > 1 else c.ljust(widths[i]) for i, c in enumerate(r)) for r in rows]
    lines.append("(same workload and seed under each policy, NGINX reloaded between them; fresh ids and nonces per "
                 f"policy; the fleet's policy {result['metadata'].get('policy_restored')} was restored)")
    lines.extend(_notes(result))
    for st in result["steps"]:
        if not st["valid"]:
            lines.append(f"NO  {st['policy']} step {st['step'] + 1}: {st['invalid_reason']}")
    return "\n".join(lines)


def run_calibrate(args: argparse.Namespace) -> int:
    from llama_tui.core import bench, config

    duration = config.load_settings(cli={"bench.duration": args.duration}).get("bench.duration") if args.duration else 3.0
    info(f"calibrating the client against a loopback SSE source for {duration:g} s ...")
    cal = bench.calibrate(duration=duration)
    if args.json == "-":
        print_json(cal)
        return 0
    if args.json:
        bench.write_outputs(cal, args.json, None)
    ceiling = cal.get("ceiling_events_s_per_worker")
    print(f"client ceiling: {_fmt(ceiling)} events/s per worker (one event carries one token from this source)")
    print(f"CPU per 1,000 tok/s: {_fmt(cal.get('cpu_percent_per_1k_tok_s'), '.2f')}% of one core")
    print(f"measured: {_fmt(cal['events_s'])} events/s at {_fmt(cal['client_cpu_percent'], '.0f')}% of a core, "
          f"{cal['concurrency']} streams, {_fmt(cal.get('events_per_read'), '.2f')} events per read, "
          f"loop lag p99 {_fmt(cal.get('loop_lag_p99_ms'), '.1f')} ms, {cal['errors']} errors")
    epr = cal.get("events_per_read")
    if epr is not None and epr > 1.2 or (cal.get("loop_lag_p99_ms") or 0) > bench.LOOP_LAG_LIMIT_MS:
        print("note: the client read several events per read or its loop lagged (a busy machine?): reads were "
              "batched, so this ceiling is optimistic; calibrate again on a quieter machine")
    print(f"a step above {bench.CEILING_FRACTION:.0%} of the ceiling per worker is marked invalid; "
          f"saved to {bench.calibration_path()}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from llama_tui.core import bench
    from llama_tui.core.childproc import stop_on_signals

    if args.calibrate:
        return run_calibrate(args)
    cfg = build_config(args)
    policies = None
    if args.policies is not None:
        from llama_tui.core.bench import policy_ab

        policies = policy_ab.parse_policies(args.policies)
        policy_ab.check_fleet(cfg)
    warn_api_key_argv(args)  # once the input is known to be good: bad input gets one line
    live = _LiveLine()
    stop = threading.Event()
    with stop_on_signals(stop, lambda: info("\nstopping after this step's window (Ctrl-C again to abort)")):
        if policies is None:
            result = bench.run(cfg, on_sample=live.sample, stop=stop, on_step=live.step)
        else:
            result = policy_ab.run_policies(cfg, policies, on_sample=live.sample, stop=stop, on_step=live.step,
                                            on_policy=lambda p: info(f"policy {p}: NGINX reloaded"))
    bench.write_outputs(result, args.json, args.csv)
    if args.json == "-":
        print_json(result)
    else:
        print(table(result) if policies is None else ab_table(result))
        for path in (args.json, args.csv):
            if path:
                info(f"wrote {path}")
    return 130 if result.get("stopped") else 0
