"""Dataset files for `--workload dataset:FILE`: the prompts users' own traffic carries.

One JSON value per line (JSONL; blank lines are skipped), each one of:
- `{"prompt": "..."}` (or `"text"`, `"input"`), optionally with a system prompt in `"system"`,
  `"system_prompt"` or `"prefix"`: a plain prompt, as in vLLM's custom dataset and GuideLLM's columns;
- `{"messages": [{"role": ..., "content": ...}, ...]}`: an OpenAI chat request; the messages up to and
  including the last user message are sent (a trailing assistant message is the reference answer);
- `{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}`: a ShareGPT record; its
  first human turn (with any system turn before it) is sent, as vLLM's sharegpt dataset does;
- a JSON string: the prompt itself.
A file whose first character is `[` is read as one JSON array of such values (ShareGPT's own files).

Output lengths never come from the file: `--n-predict` (fixed or drawn) decides them, so runs compare
like with like. Each entry is kept as chat messages; the native /completion API gets their contents
joined by blank lines.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llama_tui.core.errors import UserError

PROMPT_KEYS = ("prompt", "text", "input")
SYSTEM_KEYS = ("system", "system_prompt", "prefix")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "system": "system"}
FORMATS = ('each line one JSON value: {"prompt": "..."}, {"messages": [{"role": "user", "content": "..."}]}, '
           '{"conversations": [{"from": "human", "value": "..."}]} or a JSON string')


@dataclass(frozen=True)
class Entry:
    """One request's messages: (role, content) pairs, the last one the user's."""

    messages: tuple[tuple[str, str], ...]

    @property
    def prompt(self) -> str:
        """The text the native /completion API gets."""
        return "\n\n".join(content for _, content in self.messages)

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass(frozen=True)
class Dataset:
    path: str
    entries: tuple[Entry, ...]
    sha256: str
    kinds: dict[str, int]  # how many entries of each format

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "entries": len(self.entries), "sha256": self.sha256, "formats": dict(self.kinds)}


class _Bad(Exception):
    pass


def _text(value: Any, what: str) -> str:
    """A message content: a string, or OpenAI's list of parts (the text parts joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type", "text") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise _Bad(f"{what} is not text")


def _messages(items: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(items, list) or not items:
        raise _Bad('"messages" must be a non-empty list')
    out = []
    for i, m in enumerate(items):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _Bad(f'message {i + 1} has no "role"')
        out.append((m["role"], _text(m.get("content"), f'the content of message {i + 1}')))
    while out and out[-1][0] != "user":
        out.pop()  # a trailing assistant turn is the reference answer
    if not out:
        raise _Bad("no user message")
    return tuple(out)


def _conversation(turns: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(turns, list) or not turns:
        raise _Bad('"conversations" must be a non-empty list')
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise _Bad(f"turn {i + 1} is not an object")
        role = SHAREGPT_ROLES.get(str(t.get("from", "")).lower())
        if role is None:
            raise _Bad(f'turn {i + 1} has an unknown "from": {t.get("from")!r}')
        out.append((role, _text(t.get("value"), f'the value of turn {i + 1}')))
        if role == "user":
            return tuple(out)
    raise _Bad("no human turn")


def parse_entry(value: Any) -> tuple[Entry, str]:
    """One line's value -> (its entry, its format's name). Raises _Bad naming what is wrong."""
    if isinstance(value, str):
        if not value.strip():
            raise _Bad("empty prompt")
        return Entry((("user", value),)), "prompt"
    if not isinstance(value, dict):
        raise _Bad("not an object or a string")
    if "messages" in value:
        return Entry(_messages(value["messages"])), "messages"
    if "conversations" in value:
        return Entry(_conversation(value["conversations"])), "sharegpt"
    for key in PROMPT_KEYS:
        if key in value:
            prompt = _text(value[key], f'"{key}"')
            if not prompt.strip():
                raise _Bad(f'empty "{key}"')
            system = next((value[k] for k in SYSTEM_KEYS if isinstance(value.get(k), str) and value[k]), None)
            msgs = ((("system", system),) if system else ()) + (("user", prompt),)
            return Entry(msgs), "prompt"
    raise _Bad('no "prompt", "messages" or "conversations"')


def load(path: str | Path) -> Dataset:
    """Parse a dataset file. Any problem is a UserError naming the file and the line (or array item)."""
    p = Path(path).expanduser()
    fix = f"correct the file ({FORMATS})"
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UserError(f"dataset file {p} does not exist", "give --workload dataset:FILE an existing JSONL file") \
            from None
    except OSError as exc:
        raise UserError(f"cannot read dataset file {p}: {exc.strerror or exc}", "check the path and its "
                        "permissions") from None
    entries: list[Entry] = []
    kinds: dict[str, int] = {}

    def add(value: Any, where: str) -> None:
        try:
            entry, kind = parse_entry(value)
        except _Bad as exc:
            raise UserError(f"dataset {p} {where}: {exc}", fix) from None
        entries.append(entry)
        kinds[kind] = kinds.get(kind, 0) + 1

    if data.lstrip()[:1] == b"[":
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UserError(f"dataset {p}: not a JSON array ({exc})", fix) from None
        for i, value in enumerate(items):
            add(value, f"item {i + 1}")
    else:
        for n, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise UserError(f"dataset {p} line {n}: not JSON ({str(exc).split(':', 1)[0]})", fix) from None
            add(value, f"line {n}")
    if not entries:
        raise UserError(f"dataset {p} holds no prompts", fix)
    return Dataset(str(p), tuple(entries), hashlib.sha256(data).hexdigest(), kinds)


_CACHE: dict[tuple[str, int, int], Dataset] = {}


def load_cached(path: str) -> Dataset:
    """`load`, once per file version in this process (a load worker reads it at its first step)."""
    try:
        st = Path(path).expanduser().stat()
    except OSError:
        return load(path)  # says what is wrong
    key = (str(path), st.st_mtime_ns, st.st_size)
    ds = _CACHE.get(key)
    if ds is None:
        _CACHE.clear()
        ds = _CACHE[key] = load(path)
    return ds
