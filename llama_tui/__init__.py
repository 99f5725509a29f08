"""llama-tui: fleets of llama-server behind NGINX, measured honestly."""

__version__ = "0.1.0"
