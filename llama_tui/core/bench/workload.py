"""The workload: what a step's requests send (`RequestShape`), and the workloads a user can ask for.

- `unique` (the default): one prompt, with a unique nonce in front of it per request, so llama-server's
  prompt cache is not hit (or the same prompt with --cache-prompt, to measure reuse).
- `shared-prefix`: G system prompts ("agents") of about S tokens each; each request takes one of them
  (drawn with the seed) and adds a unique user part of --prompt-tokens tokens. It sends the agent's id
  as `X-Session-Id`, so the `hash` policy keeps an agent on one instance.
- `sessions`: N multi-turn conversations of T turns; each turn sends its conversation's history (the
  earlier turns and the replies the server gave) plus a new user part, with the conversation's id as
  `X-Session-Id`. A conversation has at most one turn in flight; after T turns it starts again.
- `dataset:FILE`: prompts, chat messages or ShareGPT conversations from a JSONL file (core/bench/
  datasets.py), drawn with the seed.
Output lengths are --n-predict tokens, or drawn uniformly from --n-predict MIN:MAX per request.
Workloads other than `unique` send `cache_prompt: true`: cache reuse is part of what they measure.

`RequestShape` is plain data (it crosses the pipes to the load workers); core/bench/traffic.py turns
it into each request's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from llama_tui import __version__
from llama_tui.core.bench.target import Target
from llama_tui.core.errors import UserError

WORKLOADS = ("unique", "shared-prefix", "sessions", "dataset:FILE")
SESSION_HEADER = "X-Session-Id"
# Ranges a workload's numbers must lie in (S, G, N, T).
LIMITS = {"prefix_tokens": (1, 131072), "prefix_groups": (1, 4096), "sessions": (1, 4096), "turns": (1, 1000)}
DEFAULTS = {"prefix_tokens": 512, "prefix_groups": 4, "turns": 4}  # sessions: the largest concurrency (or 16)
OPTIONS = {"shared-prefix": ("prefix_tokens", "prefix_groups"), "sessions": ("sessions", "turns")}


def parse_workload(text: str) -> tuple[str, str | None]:
    """"unique", "shared-prefix", "sessions" or "dataset:FILE" -> (name, dataset path or None)."""
    name = text.strip()
    if name.startswith("dataset:"):
        path = name[len("dataset:"):].strip()
        if not path:
            raise UserError("--workload dataset: needs a file", "write --workload dataset:PROMPTS.jsonl")
        return "dataset", path
    alias = name.replace("_", "-")
    if alias in ("unique", "shared-prefix", "sessions"):
        return alias, None
    raise UserError(f"unknown workload {text!r}", f"use one of: {', '.join(WORKLOADS)}")


def parse_n_predict(text: str | int) -> tuple[int, int | None]:
    """"128" -> (128, None); "64:512" -> (64, 512): drawn uniformly per request."""
    s = str(text).strip()
    lo_s, sep, hi_s = s.partition(":")
    try:
        lo, hi = int(lo_s), (int(hi_s) if sep else None)
    except ValueError:
        raise UserError(f"--n-predict must be N or MIN:MAX, got {text!r}", "write e.g. --n-predict 128 or "
                        "--n-predict 64:512") from None
    if lo < 1 or (hi is not None and hi < lo):
        raise UserError(f"--n-predict must be >= 1 (and MIN <= MAX), got {text!r}", "write e.g. --n-predict 64:512")
    return lo, (hi if hi != lo else None)


def check_range(name: str, value: int | None) -> None:
    lo, hi = LIMITS[name]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi):
        flag = "--" + name.replace("_", "-")
        raise UserError(f"{flag} must be an integer from {lo} to {hi}, got {value!r}", f"correct {flag}")


@dataclass(frozen=True)
class RequestShape:
    """What every request of a step sends (plain data: it crosses the pipes to the load workers)."""

    api: str = "completion"  # "completion" (native /completion) or "chat" (/v1/chat/completions)
    stream: bool = True
    n_predict: int = 128
    n_predict_max: int | None = None  # drawn uniformly from n_predict..n_predict_max per request
    prompt: str = "Tell me a story."  # the user part of every request
    nonce: bool = True  # a unique prefix per request so llama-server's prompt cache is not hit
    cache_prompt: bool = False  # send cache_prompt: true (and no nonce) to measure cache reuse
    ignore_eos: bool = True  # fixed-length output
    api_key: str | None = None
    timeout_s: float = 120.0  # a request that receives nothing for this long is a timeout
    connect_timeout_s: float = 10.0
    model: str | None = None  # "model" field of chat requests (llama-server ignores it)
    workload: str = "unique"  # unique, shared-prefix, sessions, dataset
    prefix: str = ""  # shared-prefix: each system prompt's text after its agent tag
    groups: int = 0  # shared-prefix: G
    sessions: int = 0  # sessions: N
    turns: int = 0  # sessions: T
    dataset: str | None = None  # dataset: the file
    run_tag: str = ""  # random per run: agents' and conversations' ids, so no run reuses another's cache

    @property
    def path(self) -> str:
        return "/completion" if self.api == "completion" else "/v1/chat/completions"

    @property
    def sends_cache_prompt(self) -> bool:
        return self.cache_prompt or self.workload != "unique"

    def body(self, prompt: str | None, n_predict: int, messages: list[dict[str, str]] | None = None) -> dict[str, Any]:
        """The JSON body: `prompt` for the native API (`messages`' contents when only those are given),
        `messages` for the chat API (a user message holding `prompt` when only that is given)."""
        if self.api == "completion":
            if prompt is None:
                prompt = "\n\n".join(m["content"] for m in messages or ())
            body: dict[str, Any] = {"prompt": prompt, "n_predict": n_predict, "stream": self.stream}
        else:
            body = {"messages": messages if messages is not None else [{"role": "user", "content": prompt}],
                    "max_tokens": n_predict, "stream": self.stream}
            if self.stream:
                body["stream_options"] = {"include_usage": True}
            if self.model:
                body["model"] = self.model
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.sends_cache_prompt:
            body["cache_prompt"] = True
        return body

    def head(self, target: Target) -> bytes:
        """Request line and headers up to (not including) Content-Length and the workload's own headers."""
        lines = [
            f"POST {target.path}{self.path} HTTP/1.1",
            f"Host: {target.netloc}",
            f"User-Agent: llama-tui/{__version__}",
            "Content-Type: application/json",
            f"Accept: {'text/event-stream' if self.stream else 'application/json'}",
            "Connection: close",
        ]
        if self.api_key:
            lines.append(f"Authorization: Bearer {self.api_key}")
        return ("\r\n".join(lines) + "\r\n").encode()

    def user_part(self, nonce: str | None) -> str:
        """The prompt with its nonce in front (the unique part first: llama-server reuses the longest
        common prefix of a slot's last prompt), or without one when cache reuse is measured."""
        return f"{nonce}: {self.prompt}" if nonce and self.nonce and not self.cache_prompt else self.prompt

    @staticmethod
    def frame(head: bytes, body: bytes, extra: bytes = b"") -> bytes:
        """A request's bytes: `head` (see `head`), the workload's header lines, the JSON body."""
        return head + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def request(self, target: Target, nonce: str | None) -> bytes:
        """One request of the `unique` workload, carrying `nonce`, at the fixed (lowest) output length."""
        return self.frame(self.head(target), orjson.dumps(self.body(self.user_part(nonce), self.n_predict)))

    def describe(self) -> dict[str, Any]:
        """The workload, as the JSON metadata records it."""
        out: dict[str, Any] = {"name": self.workload}
        if self.workload == "shared-prefix":
            out.update(prefix_groups=self.groups, session_header=f"{SESSION_HEADER}: the agent's id")
        elif self.workload == "sessions":
            out.update(sessions=self.sessions, turns=self.turns,
                       session_header=f"{SESSION_HEADER}: the conversation's id")
        out["n_predict"] = (self.n_predict if self.n_predict_max is None else
                            {"min": self.n_predict, "max": self.n_predict_max, "distribution": "uniform"})
        out["cache_prompt"] = self.sends_cache_prompt
        return out
