"""Where the model file is on each Ray node: `--model-dir LABEL=DIR` (repeatable, `--engine ray` only).

LABEL is a custom resource of a node (`ray start --resources '{"LABEL": 1}'`, the kind of name
`--node-resource` takes). An instance placed on a node that has LABEL loads DIR/<the model's file
name>; a node with none of the labels loads `--model` as given. When a node has several of the
labels, the first `--model-dir` given that it has wins. DIR is a path on those nodes, so it must be
absolute and is never expanded or checked here: `ray_cluster.prepare` asks each node before anything
is placed, and the instance's actor resolves the path again on the node it lands on (a restarted or
re-placed instance may land on a node of another label).

Settings give the pairs as "LABEL=DIR" strings, each possibly several separated by commas (the
command line, repeated; `LLAMA_TUI_FLEET_MODEL_DIR`; a TOML list), or a TOML table `[fleet.model_dir]`
of LABEL = "DIR". A DIR therefore holds no comma.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, Mapping, Sequence

from llama_tui.core.errors import UserError

LABEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*")
SYNTAX_FIX = ("write it as --model-dir LABEL=DIR: LABEL a node's custom resource (`ray start --resources "
              "'{\"LABEL\": 1}'`), DIR an absolute directory on those nodes")

ModelDirs = tuple[tuple[str, str], ...]


def _pair(label: Any, directory: Any, shown: str) -> tuple[str, str]:
    label, directory = str(label).strip(), str(directory).strip()
    if not LABEL_RE.fullmatch(label):
        raise UserError(f"--model-dir {shown!r}: {label!r} is not a node label (letters, digits, _ . : / -)",
                        SYNTAX_FIX)
    if not directory:
        raise UserError(f"--model-dir {shown!r} names no directory", SYNTAX_FIX)
    if not posixpath.isabs(directory):
        raise UserError(f"--model-dir {shown!r}: {directory!r} is not an absolute path (it is a path on the "
                        "nodes, never expanded here)", f"write it from the root, e.g. {label}=/srv/models")
    return label, posixpath.normpath(directory)


def _entry(text: str) -> tuple[str, str]:
    label, sep, directory = text.partition("=")
    if not sep:
        raise UserError(f"--model-dir {text!r} has no '='", SYNTAX_FIX)
    return _pair(label, directory, text)


def _entries(text: str) -> list[tuple[str, str]]:
    """"LABEL=DIR", or several separated by commas (a DIR holds no comma)."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise UserError(f"--model-dir {text!r} is empty", SYNTAX_FIX)
    return [_entry(part) for part in parts]


def parse(value: Any) -> ModelDirs:
    """The (LABEL, DIR) pairs of a setting, in the order given; UserError for a bad entry."""
    if value is None or value == "" or value == [] or value == ():
        return ()
    if isinstance(value, Mapping):
        pairs = [_pair(k, v, f"{k}={v}") for k, v in value.items()]
    elif isinstance(value, str):
        pairs = _entries(value)
    elif isinstance(value, (list, tuple)):  # (pairs come back from the state file as lists)
        pairs = [p for item in value for p in ([_pair(item[0], item[1], f"{item[0]}={item[1]}")]
                                                if isinstance(item, (list, tuple)) and len(item) == 2
                                                else _entries(str(item)))]
    else:
        raise UserError(f"--model-dir {value!r} is neither LABEL=DIR nor a list of them", SYNTAX_FIX)
    seen: dict[str, str] = {}
    for label, directory in pairs:
        if label in seen:
            raise UserError(f"--model-dir gives the label {label!r} twice ({seen[label]} and {directory})",
                            "give each label one directory")
        seen[label] = directory
    return tuple(pairs)


def match(pairs: Sequence[tuple[str, str]], resources: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first (LABEL, DIR) whose label the node has (a custom resource above 0), or None."""
    return next(((label, d) for label, d in pairs if (resources.get(label) or 0) > 0), None)


def model_on_node(model: str, pairs: Sequence[tuple[str, str]], resources: Mapping[str, Any]) -> str:
    """The model's path on a node with `resources`: DIR/<file name> for its first matching label, else `model`."""
    found = match(pairs, resources)
    return posixpath.join(found[1], posixpath.basename(model)) if found else model


def with_model(cmd: Sequence[str], path: str) -> list[str]:
    """`cmd` (a llama-server command line) loading the model at `path`."""
    out = list(cmd)
    if "-m" in out:
        out[out.index("-m") + 1] = path
    else:
        out += ["-m", path]
    return out


def unmatched(pairs: Sequence[tuple[str, str]], nodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """The labels no node of `nodes` (as `ray.nodes()` gives them) has: most likely a typo."""
    return [label for label, _ in pairs if not any((n.get("Resources", {}).get(label) or 0) > 0 for n in nodes)]

