"""Everything the TUI asks of the core goes through a controller.

The app never calls `core.fleet`, `core.bench` or `core.sweep` itself: it is handed a `Controller`
(by `make_app`). `CoreController` is the real one; `tests/support/scripted.py` holds a scripted one with fixed
content for tests, snapshots and the CPU-cost benchmark.

Every method may block (HTTP, psutil, process start-up): the app calls them from thread workers and
only hands their frozen results (core/snapshots.py) to widgets. Benchmarks and sweeps run in their
own processes (`bench.spawn`, `sweep.spawn`); a `RunHandle` only relays what they stream.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

from llama_tui.core.config import POLICIES, PresetInfo
from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import BenchSample, FleetSnapshot, StepVerdict, SweepProgress

T = TypeVar("T")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class FleetForm:
    """What the fleet form edits. `None` means "auto" (llama-tui or llama-server decides)."""

    model: str | None = None  # a GGUF path, or "tiny"
    instances: int = 2
    parallel: int = 2
    ctx_per_slot: int = 2048
    gpu_layers: int | None = None
    gpus: tuple[int, ...] = ()
    policy: str = "least_conn"
    preset: str | None = None  # the preset the values came from

    def overrides(self) -> dict[str, Any]:
        """The form as settings overrides ("fleet.key" -> value), like command-line options."""
        return {
            "fleet.model": self.model,
            "fleet.instances": self.instances,
            "fleet.parallel": self.parallel,
            "fleet.ctx_per_slot": self.ctx_per_slot,
            "fleet.gpu_layers": self.gpu_layers if self.gpu_layers is not None else "auto",
            "fleet.gpus": ",".join(map(str, self.gpus)),
            "fleet.policy": self.policy,
        }

    def describe(self) -> str:
        model = Path(self.model).name if self.model and self.model != "tiny" else "tiny demo model"
        return f"{self.instances} x {self.parallel} slots, ctx {self.ctx_per_slot}/slot, {model}, {self.policy}"


@dataclass(frozen=True)
class LogSource:
    label: str
    path: Path


class RunHandle(Generic[T]):
    """A benchmark or sweep running in its own process: iterate `events()` (blocks), `cancel()` it."""

    def events(self) -> Iterator[T]:  # pragma: no cover - interface
        raise NotImplementedError

    def cancel(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def stop(self) -> None:
        """End early but keep what was measured (default: cancel)."""
        self.cancel()

    def summary(self) -> str | None:
        """One line about the finished run (where results went), or None."""
        return None


class Controller:
    """The TUI's view of the core. Subclasses implement every method; all may block."""

    autostart: bool = False  # start the configured fleet at launch when none is running

    def snapshot(self) -> FleetSnapshot:
        raise NotImplementedError

    def form(self) -> FleetForm:
        """The fleet `s` starts: the command line / preset, or what the form last applied."""
        raise NotImplementedError

    def start(self, form: FleetForm | None = None, on_progress: Progress | None = None) -> FleetSnapshot:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def scale(self, instances: int) -> None:
        raise NotImplementedError

    def restart(self, index: int | None = None) -> None:
        raise NotImplementedError

    def set_policy(self, policy: str) -> None:
        raise NotImplementedError

    def start_bench(self) -> RunHandle[BenchSample | StepVerdict]:
        raise NotImplementedError

    def start_sweep(self) -> RunHandle[SweepProgress]:
        raise NotImplementedError

    def apply_shape(self, out_dir: Path | str, on_progress: Progress | None = None) -> FleetSnapshot:
        """Restart the fleet as the best shape of the sweep in `out_dir` (the sweep's "apply best")."""
        raise NotImplementedError

    def log_sources(self, snap: FleetSnapshot) -> list[LogSource]:
        raise NotImplementedError

    def find_models(self) -> list[Path]:
        raise NotImplementedError

    def presets(self) -> list[PresetInfo]:
        raise NotImplementedError

    def load_preset(self, name: str) -> FleetForm:
        raise NotImplementedError

    def save_preset(self, name: str, form: FleetForm) -> Path:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the controller holds (not the fleet: that keeps running)."""


def next_policy(current: str | None) -> str:
    if current not in POLICIES:
        return POLICIES[0]
    return POLICIES[(POLICIES.index(current) + 1) % len(POLICIES)]


# ------------------------------------------------------------------------------------------------ the real one


class _BenchRun(RunHandle[BenchSample | StepVerdict]):
    """A `bench.BenchProcess`: its live samples, and each step's verdict as the step ends."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc

    def events(self) -> Iterator[BenchSample | StepVerdict]:
        yield from self.proc.events()

    def stop(self) -> None:
        self.proc.stop()

    def cancel(self) -> None:
        self.proc.cancel()

    def summary(self) -> str | None:
        result = self.proc.result()  # raises the run's UserError if it failed
        return f"results in {result['out']}" if result.get("out") else None


class _SweepRun(RunHandle[SweepProgress]):
    def __init__(self, proc: Any) -> None:
        self.proc = proc

    def events(self) -> Iterator[SweepProgress]:
        yield from self.proc.events()

    def cancel(self) -> None:
        # The graceful stop, not waited for: the sweep finishes its step, tears its fleet down (only it
        # can: the fleet runs in its own session) and stays resumable, also after the TUI has gone.
        self.proc.stop()

    def summary(self) -> str | None:
        result = self.proc.result()  # raises the run's UserError (its fix names the sweep's log) if it failed
        return f"sweep {result.get('status', 'ended')}: results in {result.get('out_dir', self.proc.log_path.parent)}"


class CoreController(Controller):
    """Calls the real core: `core.fleet`, `core.bench`, `core.sweep`, `core.config`, `core.model`."""

    def __init__(self, preset: str | None = None, cli: dict[str, Any] | None = None, autostart: bool = False,
                 state_dir: Path | None = None) -> None:
        from llama_tui.core import config

        self.preset = preset
        self.cli = {k: v for k, v in (cli or {}).items() if v is not None}
        self.autostart = autostart
        self.state_dir = state_dir
        self.settings = config.load_settings(preset=preset, cli=self.cli)  # bad options fail before the UI opens
        self._form = self._form_from(self.settings)
        self._monitor: Any = None
        self._monitor_lock = threading.Lock()  # a Monitor is not thread-safe; polls may overlap briefly
        self._adopt_tried_at = -self.ADOPT_EVERY_S

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CoreController":
        """From the command line `llama-tui` was given: its --preset and fleet options (core.config.FLEET_OPTIONS)."""
        from llama_tui.core import config

        cli = config.fleet_overrides(args)
        preset = getattr(args, "preset", None)
        given = preset is not None or any(v is not None for v in cli.values())
        return cls(preset=preset, cli=cli, autostart=given)

    @staticmethod
    def _form_from(settings: Any) -> FleetForm:
        f = settings.section("fleet")
        return FleetForm(model=f["model"], instances=f["instances"], parallel=f["parallel"],
                         ctx_per_slot=f["ctx_per_slot"], gpu_layers=f["gpu_layers"], gpus=tuple(f["gpus"]),
                         policy=f["policy"], preset=settings.preset)

    def _settings_for(self, form: FleetForm) -> Any:
        from llama_tui.core import config

        return config.load_settings(preset=form.preset or self.preset, cli={**self.cli, **form.overrides()})

    # ---------------------------------------------------------------- fleet

    ADOPT_EVERY_S = 30.0  # how often to try again when adopting an orphaned fleet fails

    def snapshot(self) -> FleetSnapshot:
        from llama_tui.core import fleet

        with self._monitor_lock:
            if self._monitor is None:
                self._monitor = fleet.Monitor()
            snap = fleet.snapshot(self.state_dir, monitor=self._monitor)
            if snap.running and snap.supervisor_alive is False and self._may_adopt():
                # The supervisor died (killed, OOM): its instances and NGINX still serve. Opening the TUI
                # starts a new supervisor that takes them over; a failure shows as a poll error.
                fleet.adopt(self.state_dir)
                snap = fleet.snapshot(self.state_dir, monitor=self._monitor)
            return snap

    def _may_adopt(self) -> bool:
        now = time.monotonic()
        if now - self._adopt_tried_at < self.ADOPT_EVERY_S:
            return False
        self._adopt_tried_at = now
        return True

    def form(self) -> FleetForm:
        return self._form

    def start(self, form: FleetForm | None = None, on_progress: Progress | None = None) -> FleetSnapshot:
        from llama_tui.core import fleet

        form = form or self._form
        settings = self._settings_for(form)
        spec = fleet.FleetSpec.from_settings(settings)
        snap = fleet.up(spec, self.state_dir, on_progress=on_progress)
        self.settings, self._form = settings, form
        return snap

    def stop(self) -> None:
        from llama_tui.core import fleet

        fleet.down(self.state_dir)

    def scale(self, instances: int) -> None:
        from llama_tui.core import fleet

        fleet.scale(instances, self.state_dir)
        self._form = replace(self._form, instances=instances)

    def restart(self, index: int | None = None) -> None:
        from llama_tui.core import fleet

        fleet.restart(index, self.state_dir)

    def set_policy(self, policy: str) -> None:
        from llama_tui.core import fleet

        fleet.set_policy(policy, self.state_dir)
        self._form = replace(self._form, policy=policy)

    # ---------------------------------------------------------------- bench and sweep

    def _state(self) -> Any:
        from llama_tui.core import fleet

        state = fleet.load_state(self.state_dir)
        if state is None:
            raise UserError("no fleet is running", "start one first (key s)")
        return state

    def start_bench(self) -> RunHandle[BenchSample | StepVerdict]:
        """The settings' [bench] steps against the fleet's NGINX, in a child process (bench.spawn)."""
        from llama_tui.core import bench

        url = self._state().nginx_url()
        if not url:
            raise UserError("the fleet has no NGINX front door yet", "wait until the fleet is ready")
        sd = str(self.state_dir) if self.state_dir is not None else None
        config = bench.BenchConfig.from_settings(self.settings, url=url, state_dir=sd)
        return _BenchRun(bench.spawn(config))

    def start_sweep(self) -> RunHandle[SweepProgress]:
        """The settings' [sweep] grid with the form's model and context, on free ports, in a child process."""
        from llama_tui.core import fleet, sweep

        settings = self._settings_for(self._form)
        widest = max(settings.get("sweep.instances"))
        base = fleet.free_port_block(widest + 1)  # instances on base.., the sweep's NGINX on the port after
        f = self._form
        options = {"model": f.model or "tiny", "ctx_per_slot": f.ctx_per_slot, "policy": f.policy,
                   "base_port": base, "nginx_port": base + widest, "gpu_layers": f.gpu_layers,
                   "gpus": list(f.gpus) or None}
        config, _ = sweep.build_config(options, preset=f.preset or self.preset)
        return _SweepRun(sweep.spawn(config))

    def apply_shape(self, out_dir: Path | str, on_progress: Progress | None = None) -> FleetSnapshot:
        """The best shape of the sweep in `out_dir` with its full fleet settings (sweep.best_shape, as
        `sweep report --apply`), over this TUI's own options (ports, host): the running fleet is
        replaced only once that spec is valid."""
        from llama_tui.core import fleet, sweep

        best = sweep.best_shape(out_dir)
        settings = best.settings(preset=self._form.preset or self.preset, cli=self.cli)
        spec = fleet.FleetSpec.from_settings(settings)
        self.stop()
        snap = fleet.up(spec, self.state_dir, on_progress=on_progress)
        self.settings, self._form = settings, self._form_from(settings)
        return snap

    # ---------------------------------------------------------------- logs, models, presets

    def log_sources(self, snap: FleetSnapshot) -> list[LogSource]:
        from llama_tui.core import fleet

        out = [LogSource(f"instance {i.index} :{i.port}", Path(i.log_path)) for i in snap.instances if i.log_path]
        state = fleet.load_state(self.state_dir)
        if state is not None and state.nginx is not None and state.nginx.error_log:
            out.append(LogSource("NGINX error log", Path(state.nginx.error_log)))
        return out

    def find_models(self) -> list[Path]:
        from llama_tui.core import model

        return model.find_models()

    def presets(self) -> list[PresetInfo]:
        from llama_tui.core import config

        return config.list_presets()

    def load_preset(self, name: str) -> FleetForm:
        from llama_tui.core import config

        form_keys = FleetForm().overrides().keys()  # the preset's values, not the command line's, for these
        keep = {k: v for k, v in self.cli.items() if k not in form_keys}
        return self._form_from(config.load_settings(preset=name, cli=keep))

    def save_preset(self, name: str, form: FleetForm) -> Path:
        from llama_tui.core import presets

        name = presets.check_preset_name(name)  # a bad name fails before the form's values are checked
        settings = self._settings_for(form)  # validates the form like the command line would
        return presets.save_preset(name, settings, f"saved from the llama-tui fleet form: {form.describe()}")

    def close(self) -> None:
        with self._monitor_lock:
            if self._monitor is not None:
                self._monitor.close()
                self._monitor = None
