"""Test doubles and harnesses, importable as `tests.support` (pytest's `pythonpath` puts the repository
root on sys.path). None of this ships in the wheel.

- `scripted`: a scripted `Controller` with fixed content, for pilot tests, SVG snapshots and
  `benchmarks/tui_cost.py`;
- `terminal_harness`: llama-tui in a real pseudo-terminal, for the end-to-end tests and the TUI cost benchmark;
- `screenshot`: writes the README screenshot (`make screenshot`).
- `tiny_child`: a tiny job on both ends of the child-process protocol (core/childproc.py).
"""
