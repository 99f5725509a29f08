"""The logs screen: follow any instance's log, or NGINX's error log (new lines appear as written)."""

from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Header, Log, OptionList
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from llama_tui.ui.controller import LogSource
from llama_tui.ui.messages import LogLines

TAIL_BYTES = 64 * 1024
FOLLOW_EVERY_S = 0.5
MAX_LINES = 5000


def read_from(path: Path, offset: int) -> tuple[int, list[str], bool]:
    """New complete lines of `path` after `offset`. Returns (new offset, lines, reset): reset when the file
    was truncated or replaced (it restarts from the top) or on the first read (it starts at the tail)."""
    try:
        size = path.stat().st_size
    except OSError:
        return offset, [], False
    reset = False
    if offset < 0 or size < offset:
        reset = True
        offset = max(0, size - TAIL_BYTES) if offset < 0 else 0
    if size == offset:
        return offset, [], reset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(min(size - offset, 4 * TAIL_BYTES))
    cut = data.rfind(b"\n")
    if cut < 0:
        return offset, [], reset
    text = data[: cut + 1].decode("utf-8", errors="replace")
    lines = text.splitlines()
    if reset and offset > 0 and lines:
        lines = lines[1:]  # started mid-file: the first line is partial
    return offset + cut + 1, lines, reset


class LogsScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="logs.back"),
        Binding("f", "toggle_follow", "Follow", id="logs.follow"),
    ]

    def __init__(self, sources: list[LogSource]) -> None:
        super().__init__()
        self.sources = sources
        self.following: Path | None = None
        self.follow = True

    def compose(self) -> ComposeResult:
        yield Header(icon="≡")
        with Horizontal():
            yield OptionList(*[Option(s.label, id=str(n)) for n, s in enumerate(self.sources)], id="log-sources")
            yield Log(id="log-view", max_lines=MAX_LINES, auto_scroll=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#log-sources").border_title = "Logs"
        if self.sources:
            self.query_one(OptionList).highlighted = 0
            self.open(self.sources[0])
        else:
            self.query_one(Log).write_line("No logs yet: start a fleet first (s on the main screen).")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id is not None:
            self.open(self.sources[int(event.option.id)])

    def open(self, source: LogSource) -> None:
        if source.path == self.following:
            return
        self.following = source.path
        log = self.query_one(Log)
        log.clear()
        log.border_title = f"{source.label} · {source.path}"
        self.tail(source.path)

    @work(thread=True, exclusive=True, exit_on_error=False, group="tail")
    def tail(self, path: Path) -> None:
        worker = get_current_worker()
        offset = -1
        if not path.exists():
            self.post_message(LogLines(str(path), [f"(no such file yet: {path}; waiting for it)"]))
        while not worker.is_cancelled:
            offset, lines, reset = read_from(path, offset)
            if lines or reset:
                self.post_message(LogLines(str(path), lines, reset))
            time.sleep(FOLLOW_EVERY_S)

    def on_log_lines(self, message: LogLines) -> None:
        if self.following is None or message.path != str(self.following):
            return
        log = self.query_one(Log)
        if message.reset and log.line_count > 1:
            log.clear()
        log.write_lines(message.lines, scroll_end=self.follow)

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        log = self.query_one(Log)
        log.auto_scroll = self.follow
        self.notify("following new lines" if self.follow else "not following (scroll freely)", timeout=2)

    def on_unmount(self) -> None:
        self.workers.cancel_group(self, "tail")

