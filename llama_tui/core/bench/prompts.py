"""The text a benchmark's requests carry: a prompt from --prompt or --prompt-file, or built to about
--prompt-tokens tokens with the server's own tokenizer (`/tokenize`); a workload's shared system
prompts are built the same way (`sized_text`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import orjson

from llama_tui.core.bench.target import Target
from llama_tui.core.errors import UserError

if TYPE_CHECKING:
    from llama_tui.core.bench.config import BenchConfig

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


def build_prompt(n_tokens: int, count: Callable[[str], int | None], lead: str = "") -> tuple[str, int | None]:
    """A prompt of about `n_tokens` tokens, sized with the server's own tokenizer (`count`); without one,
    one word per token. `lead` is text that will stand in front of it and counts toward the size (it is
    not part of the returned text). Returns (text, the token count of lead + text, or None)."""
    words = n_tokens
    best: tuple[int, str, int | None] | None = None
    tried: set[int] = set()
    for _ in range(8):
        text = _words(words)
        measured = count(lead + text)
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


def server_count(config: BenchConfig) -> Callable[[str], int | None]:
    """Token counting with the first target's /tokenize."""
    url = Target.parse(config.target_urls[0]).url
    return lambda text: tokenize_count(url, text, config.api_key)


def sized_text(config: BenchConfig, n_tokens: int, lead: str = "") -> tuple[str, dict[str, Any]]:
    """Filler text that makes `lead + text` about `n_tokens` tokens; and how it was sized."""
    text, measured = build_prompt(n_tokens, server_count(config), lead)
    return text, {"tokens": measured,
                  "tokenizer": "server /tokenize" if measured is not None else "none (about one token per word)"}


def resolve_prompt(config: BenchConfig) -> tuple[str, dict[str, Any]]:
    if config.prompt is not None:
        return config.prompt, {"source": "--prompt"}
    if config.prompt_file is not None:
        path = Path(config.prompt_file).expanduser()
        try:
            return path.read_text(), {"source": f"--prompt-file {path}"}
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read prompt file {path}: {exc}", "correct --prompt-file") from None
    text, info = sized_text(config, config.prompt_tokens)
    return text, {"source": f"--prompt-tokens {config.prompt_tokens}", **info}
