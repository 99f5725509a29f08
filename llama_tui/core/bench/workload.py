"""The workload: what each request of a step sends (`RequestShape`) and the prompt it carries.

The prompt comes from --prompt, --prompt-file, or is built to about --prompt-tokens tokens with the
server's own tokenizer (`/tokenize`). Every request gets a unique nonce in front of the prompt (so
llama-server's prompt cache is not hit) unless cache reuse is what is measured (--cache-prompt).
The step runner asks `RequestShape.request(target, nonce)` for each request's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import orjson

from llama_tui import __version__
from llama_tui.core.bench.target import Target
from llama_tui.core.errors import UserError

if TYPE_CHECKING:
    from llama_tui.core.bench.config import BenchConfig


@dataclass(frozen=True)
class RequestShape:
    """What every request of a step sends."""

    api: str = "completion"  # "completion" (native /completion) or "chat" (/v1/chat/completions)
    stream: bool = True
    n_predict: int = 128
    prompt: str = "Tell me a story."
    nonce: bool = True  # a unique prefix per request so llama-server's prompt cache is not hit
    cache_prompt: bool = False  # send cache_prompt: true (and no nonce) to measure cache reuse
    ignore_eos: bool = True  # fixed-length output
    api_key: str | None = None
    timeout_s: float = 120.0  # a request that receives nothing for this long is a timeout
    connect_timeout_s: float = 10.0
    model: str | None = None  # "model" field of chat requests (llama-server ignores it)

    @property
    def path(self) -> str:
        return "/completion" if self.api == "completion" else "/v1/chat/completions"

    def body(self, nonce: str | None) -> dict[str, Any]:
        prompt = f"{nonce}: {self.prompt}" if nonce else self.prompt
        if self.api == "completion":
            body: dict[str, Any] = {"prompt": prompt, "n_predict": self.n_predict, "stream": self.stream}
        else:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": self.n_predict,
                    "stream": self.stream}
            if self.stream:
                body["stream_options"] = {"include_usage": True}
            if self.model:
                body["model"] = self.model
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.cache_prompt:
            body["cache_prompt"] = True
        return body

    def head(self, target: Target) -> bytes:
        """Request line and headers up to (not including) Content-Length."""
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

    def request(self, target: Target, nonce: str | None) -> bytes:
        body = orjson.dumps(self.body(nonce if self.nonce and not self.cache_prompt else None))
        return self.head(target) + b"Content-Length: %d\r\n\r\n" % len(body) + body


# --------------------------------------------------------------------------------------------- prompts

_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches and "
          "every morning engineers measure how many tokens per second their servers can stream").split()


def _words(n: int) -> str:
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(max(1, n)))


def tokenize_count(url: str, text: str, api_key: str | None = None) -> int | None:
    from llama_tui.core import probe

    with probe.Probe(timeout=10.0, api_key=api_key, keep_alive=False) as pr:
        r = pr.post_json(url, "/tokenize", {"content": text})
    if r is None or r.status != 200:
        return None
    try:
        tokens = orjson.loads(r.body).get("tokens")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return len(tokens) if isinstance(tokens, list) else None


def build_prompt(n_tokens: int, count: Callable[[str], int | None]) -> tuple[str, int | None]:
    """A prompt of about `n_tokens` tokens, sized with the server's own tokenizer (`count`); without one,
    one word per token. Returns (text, its token count or None)."""
    words = n_tokens
    best: tuple[int, str, int | None] | None = None
    tried: set[int] = set()
    for _ in range(8):
        text = _words(words)
        measured = count(text)
        if measured is None:
            return text, None
        if best is None or abs(measured - n_tokens) < best[0]:
            best = (abs(measured - n_tokens), text, measured)
        if measured == n_tokens:
            break
        tried.add(words)
        nxt = max(1, round(words * n_tokens / max(1, measured)))
        if nxt in tried:
            nxt = words + (1 if measured < n_tokens else -1)
        if nxt < 1 or nxt in tried:
            break
        words = nxt
    assert best is not None
    return best[1], best[2]


def resolve_prompt(config: BenchConfig) -> tuple[str, dict[str, Any]]:
    if config.prompt is not None:
        return config.prompt, {"source": "--prompt"}
    if config.prompt_file is not None:
        path = Path(config.prompt_file).expanduser()
        try:
            return path.read_text(), {"source": f"--prompt-file {path}"}
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read prompt file {path}: {exc}", "correct --prompt-file") from None
    url = Target.parse(config.target_urls[0]).url
    text, measured = build_prompt(config.prompt_tokens, lambda t: tokenize_count(url, t, config.api_key))
    return text, {"source": f"--prompt-tokens {config.prompt_tokens}", "tokens": measured,
                  "tokenizer": "server /tokenize" if measured is not None else "none (about one token per word)"}
