"""A sweep in a child process: `spawn` starts it and `SweepProcess` reads its events; the sweep job of
the child-process protocol (core/childproc.py), run by `python -m llama_tui.core.sweep`.

Events: {"t": "progress", "progress": SweepProgress} per change, then the result (`summary`: status,
measured, best, out_dir ...) or the error. A graceful stop drops the cell in progress, tears the
sweep's fleet down and leaves a resumable directory. That fleet runs in its own session, so only
the sweep can take it down: cancel gives it CANCEL_GRACE_S to do so before it kills.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Mapping

from llama_tui.core import paths
from llama_tui.core.childproc import ChildProcess, Emit, serve
from llama_tui.core.snapshots import SweepProgress
from llama_tui.core.sweep.config import SweepConfig
from llama_tui.core.sweep.orchestrator import SweepResult, run


class SweepProcess(ChildProcess[SweepProgress]):
    """A sweep running in a child process (its own session), streaming `SweepProgress` events; its
    stderr goes to `OUT/sweep-child.log`."""

    COMMAND = (sys.executable, "-m", "llama_tui.core.sweep")
    EVENTS = {"progress": SweepProgress.from_json}
    NAME = "sweep"
    CANCEL_GRACE_S = 60.0

    def __init__(self, config: SweepConfig) -> None:
        self.config = config
        out = paths.ensure_private_dir(Path(config.out_dir))
        super().__init__(config.to_json(), log_path=out / "sweep-child.log")


def spawn(config: SweepConfig) -> SweepProcess:
    """Run a sweep in a child process carrying LLAMA_TUI_OWNER; see SweepProcess."""
    return SweepProcess(config)


def summary(res: SweepResult) -> dict[str, Any]:
    return {"out_dir": str(res.out_dir), "status": res.status, "measured": res.measured,
            "skipped_standing": res.skipped_standing, "best": res.best, "damaged": res.damaged,
            "wall_s": round(res.wall_s, 3)}


def sweep_job(data: Mapping[str, Any], send: Emit, stop: threading.Event) -> dict[str, Any]:
    cfg = SweepConfig.from_json(data)
    return summary(run(cfg, on_event=lambda ev: send("progress", ev), stop=stop))


def main() -> int:
    """The child's entry point (`python -m llama_tui.core.sweep`)."""
    return serve(sweep_job)
