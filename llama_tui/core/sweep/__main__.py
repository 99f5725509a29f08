"""`python -m llama_tui.core.sweep`: the sweep's child process (see child.py)."""

from llama_tui.core.sweep.child import main

if __name__ == "__main__":
    raise SystemExit(main())
