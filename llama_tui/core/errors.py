"""Errors a user can fix. Each one renders as one line that names the cause and the fix."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing prerequisite. The CLI prints it on one line and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, cause: str, fix: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix
        if exit_code is not None:
            self.exit_code = exit_code

    def one_line(self) -> str:
        text = f"error: {self.cause}"
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())


class ConfigError(UserError):
    """A preset or config file that cannot be used. The cause names the file and the key or line."""
