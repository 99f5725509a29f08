"""Messages posted from worker threads to the app: the only thing that crosses threads.

Each carries frozen data (a snapshot, or a tuple of samples so far). Frequent ones say `can_replace`,
so when the terminal is slow (SSH) a stale update is dropped for the newer one instead of queueing.
"""

from __future__ import annotations

from textual.message import Message

from llama_tui.core.snapshots import BenchSample, FleetSnapshot, StepVerdict, SweepProgress
from llama_tui.ui.controller import LogSource


class FleetPolled(Message):
    def __init__(self, snapshot: FleetSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FleetPolled)


class PollFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PollFailed)


class ActionProgress(Message):
    """A long action (starting a fleet) says what it is doing."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ActionProgress)


class BenchUpdated(Message):
    def __init__(self, samples: tuple[BenchSample, ...], verdicts: tuple[StepVerdict, ...]) -> None:
        super().__init__()
        self.samples = samples
        self.verdicts = verdicts

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, BenchUpdated)


class SweepUpdated(Message):
    def __init__(self, progress: SweepProgress) -> None:
        super().__init__()
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SweepUpdated)


class LogLines(Message):
    def __init__(self, path: str, lines: list[str], reset: bool = False) -> None:
        super().__init__()
        self.path = path
        self.lines = lines
        self.reset = reset


class LogSourcesFound(Message):
    """The logs there are to follow (the logs key): the app opens the logs screen on them."""

    def __init__(self, sources: tuple[LogSource, ...]) -> None:
        super().__init__()
        self.sources = sources


class Notice(Message):
    """One line for the user from a worker (a screenshot saved, a run that could not be stopped)."""

    def __init__(self, text: str, ok: bool, timeout: float = 4) -> None:
        super().__init__()
        self.text = text
        self.ok = ok
        self.timeout = timeout


class Released(Message):
    """Leaving: the runs are cancelled and the controller closed; the app may exit."""


class ActionDone(Message):
    def __init__(self, text: str, ok: bool) -> None:
        super().__init__()
        self.text = text
        self.ok = ok


class RunStarted(Message):
    """A benchmark or sweep process started; `handle` lets the app cancel it."""

    def __init__(self, kind: str, handle: object) -> None:
        super().__init__()
        self.kind = kind
        self.handle = handle


class RunEnded(Message):
    def __init__(self, kind: str, ok: bool, text: str | None) -> None:
        super().__init__()
        self.kind = kind
        self.ok = ok
        self.text = text
