"""A benchmark in a child process (what the TUI runs), and that child's side: the bench job of the
child-process protocol (core/childproc.py).

Events: {"t": "sample", "sample": BenchSample} every ~0.5 s, {"t": "verdict", "verdict": StepVerdict}
as each step ends, then the result (metadata, steps, "out": where the JSON went) or the error.
A graceful stop ends the current step's window and keeps what was measured; cancel kills at once
(the load workers live in the child's process group and go with it).

Entry point: `python -m llama_tui.core.bench.child` (what `spawn` starts).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

from llama_tui.core.bench.config import BenchConfig
from llama_tui.core.bench.outputs import default_result_path, write_outputs
from llama_tui.core.bench.session import run
from llama_tui.core.childproc import ChildProcess, Emit, serve
from llama_tui.core.snapshots import BenchSample, StepVerdict


class BenchProcess(ChildProcess[BenchSample | StepVerdict]):
    """A benchmark running in a child process, streaming live `BenchSample`s and one `StepVerdict`
    per finished step. The parent never shares an event loop or GIL with the load."""

    COMMAND = (sys.executable, "-m", "llama_tui.core.bench.child")
    EVENTS = {"sample": BenchSample.from_json, "verdict": StepVerdict.from_json}
    NAME = "benchmark"

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        super().__init__(config.to_json())

    def samples(self, timeout: float | None = None) -> Iterator[BenchSample]:
        """Live samples until the benchmark ends (blocks between them); `events()` has the verdicts too."""
        return (e for e in self.events(timeout) if isinstance(e, BenchSample))


def spawn(config: BenchConfig) -> BenchProcess:
    """Run `run(config)` in a child process; see BenchProcess."""
    config.validated()
    return BenchProcess(config)


def bench_job(data: Mapping[str, Any], send: Emit, stop: threading.Event) -> dict[str, Any]:
    config = BenchConfig.from_json(data)
    result = run(config, on_sample=lambda s: send("sample", s), stop=stop,
                 on_step=lambda st: send("verdict", StepVerdict.from_step(st)))
    out_path = Path(config.json_path).expanduser() if config.json_path else default_result_path()
    result["out"] = str(out_path)
    write_outputs(result, str(out_path), config.csv_path)
    return result


if __name__ == "__main__":
    raise SystemExit(serve(bench_job))
