"""A tiny job for the child-process protocol's tests: `TinyProcess` (the parent's side) runs this
file (`serve(job)`, the child's side) as its child.

Its configuration picks what it does ({"do": ...}):
- "tick": one {"t": "tick", "tick": {"n": N}} every `every` s until stopped, then the result {"ticks", "stopped"};
- "fail": ends with a UserError; "crash": writes to stderr and exits without an end event;
- "stubborn": starts a grandchild in its process group, then ignores every stop;
- "noise": prints to stdout (that must not reach the events) and sends a malformed "tick" when asked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # run as a script: the repository

from llama_tui.core.childproc import ChildProcess, serve  # noqa: E402
from llama_tui.core.errors import UserError  # noqa: E402


@dataclass(frozen=True)
class Tick:
    n: int
    grandchild: int | None = None


class TinyProcess(ChildProcess[Tick]):
    COMMAND = (sys.executable, str(Path(__file__).resolve()))
    EVENTS = {"tick": lambda d: Tick(**d)}
    NAME = "tiny job"


def job(config, send, stop):
    do = config.get("do", "tick")
    if do == "fail":
        raise UserError("the tiny job was told to fail", "do not tell it to", exit_code=3)
    if do == "crash":
        sys.stderr.write("first line\nthe tiny job crashed\n")
        sys.stderr.flush()
        os._exit(5)
    if do == "noise":
        print("stray output on stdout", flush=True)
        send("unknown-tag", {"ignored": True})
        send("tick", {"n": 1})
        if config.get("malformed"):
            send("tick", {"no_such_field": 1})
        return {"ticks": 1, "stopped": False}
    if do == "stubborn":
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        send("tick", {"n": 0, "grandchild": grandchild.pid})
        while True:
            time.sleep(0.05)
    n = 0
    while not stop.is_set():
        n += 1
        send("tick", {"n": n})
        stop.wait(config.get("every", 0.05))
    return {"ticks": n, "stopped": True}


if __name__ == "__main__":
    raise SystemExit(serve(job))
