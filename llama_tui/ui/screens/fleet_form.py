"""The fleet form (key e): preset picker, GGUF model picker, shape, GPUs, policy; save as a user preset.

Submitting returns a `FleetForm`; the app starts it (or, when a fleet runs, asks and then replaces it).
"""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from llama_tui.core.config import POLICIES, PresetInfo
from llama_tui.core.errors import UserError
from llama_tui.core.model import MODEL_SEARCH_DIRS
from llama_tui.ui.controller import Controller, FleetForm

TINY = "tiny"


def parse_int(text: str, what: str, minimum: int, optional: bool = False) -> int | None:
    text = text.strip()
    if optional and text.lower() in ("", "auto"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{what} must be a whole number, got {text!r}", f"type a number >= {minimum}") from None
    if value < minimum:
        raise UserError(f"{what} must be >= {minimum}, got {value}", f"type a number >= {minimum}")
    return value


def parse_gpus(text: str) -> tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        gpus = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise UserError(f"GPUs must be indices like 0,1, got {text!r}", "type GPU indices separated by commas") from None
    if any(g < 0 for g in gpus):
        raise UserError("GPU indices start at 0", "type GPU indices like 0,1")
    return gpus


def model_label(path: Path) -> str:
    return f"{path.name}  ({path.parent})"


class FleetFormScreen(ModalScreen[FleetForm | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="form.cancel"),
        Binding("ctrl+enter,f5", "submit", "Start/apply", id="form.submit"),
    ]

    def __init__(self, controller: Controller, form: FleetForm, running: bool) -> None:
        super().__init__()
        self.controller = controller
        self.initial = form
        self.running = running
        self.model_values = {TINY}

    def compose(self) -> ComposeResult:
        f = self.initial
        with VerticalScroll(id="form-box", classes="dialog"):
            yield Static("[b]Fleet[/b]  (blank = auto)", id="form-title")
            with Horizontal(classes="field"):
                yield Label("Preset")
                yield Select([], prompt="(none)", id="preset", allow_blank=True)
            with Horizontal(classes="field"):
                yield Label("Model")
                yield Select([("tiny demo model", TINY)], value=TINY, allow_blank=True, prompt="(path below)",
                             id="model")
            with Horizontal(classes="field"):
                yield Label("  or path")
                path = f.model if f.model not in (None, TINY) else ""
                yield Input(path or "", placeholder="/path/to/model.gguf", id="model-path")
            for key, label, value in (("instances", "Instances", f.instances), ("parallel", "Parallel", f.parallel),
                                      ("ctx_per_slot", "Ctx per slot", f.ctx_per_slot),
                                      ("gpu_layers", "GPU layers", f.gpu_layers)):
                with Horizontal(classes="field"):
                    yield Label(label)
                    yield Input("" if value is None else str(value), id=key.replace("_", "-"),
                                placeholder="auto" if key == "gpu_layers" else "")
            with Horizontal(classes="field"):
                yield Label("GPUs")
                yield Input(",".join(map(str, f.gpus)), placeholder="none (e.g. 0,1)", id="gpus")
            with Horizontal(classes="field"):
                yield Label("Policy")
                yield Select([(p, p) for p in POLICIES], value=f.policy, allow_blank=False, id="policy")
            yield Static(id="form-error")
            with Horizontal(classes="buttons"):
                yield Button("Replace fleet" if self.running else "Start fleet", id="submit", variant="primary")
                yield Button("Cancel", id="cancel")
            with Horizontal(classes="field"):
                yield Label("Save as")
                yield Input(placeholder="preset name", id="preset-name")
                yield Button("Save preset", id="save")

    def on_mount(self) -> None:
        self.query_one("#form-box").border_title = "Edit fleet"
        self.query_one("#form-box").border_subtitle = "searching " + ", ".join(MODEL_SEARCH_DIRS)
        self.query_one("#instances", Input).focus()
        self.discover()

    @work(thread=True, exclusive=True, exit_on_error=False, group="form-discover")
    def discover(self) -> None:
        models = self.controller.find_models()
        presets = self.controller.presets()
        self.app.call_from_thread(self._fill_choices, models, presets)

    def _fill_choices(self, models: list[Path], presets: list[PresetInfo]) -> None:
        model = self.query_one("#model", Select)
        options = [("tiny demo model", TINY)] + [(model_label(p), str(p)) for p in models]
        model.set_options(options)
        self.model_values = {v for _, v in options}
        current = self.initial.model or TINY
        if current in self.model_values:
            model.value = current
            self.query_one("#model-path", Input).value = ""
        preset = self.query_one("#preset", Select)
        preset.set_options([(f"{p.name} ({p.origin})", p.name) for p in presets])
        if self.initial.preset in {p.name for p in presets}:
            with preset.prevent(Select.Changed):
                preset.value = self.initial.preset
        self.query_one("#form-box").border_subtitle = f"{len(models)} GGUF models found"

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset" and isinstance(event.value, str):
            self.load_preset(event.value)

    @work(thread=True, exclusive=True, exit_on_error=False, group="form-preset")
    def load_preset(self, name: str) -> None:
        try:
            form = self.controller.load_preset(name)
        except UserError as exc:
            self.app.call_from_thread(self.show_error, exc.one_line())
            return
        self.app.call_from_thread(self.fill, form)

    def fill(self, f: FleetForm) -> None:
        self.initial = f
        self.query_one("#instances", Input).value = str(f.instances)
        self.query_one("#parallel", Input).value = str(f.parallel)
        self.query_one("#ctx-per-slot", Input).value = str(f.ctx_per_slot)
        self.query_one("#gpu-layers", Input).value = "" if f.gpu_layers is None else str(f.gpu_layers)
        self.query_one("#gpus", Input).value = ",".join(map(str, f.gpus))
        self.query_one("#policy", Select).value = f.policy
        model = self.query_one("#model", Select)
        if (f.model or TINY) in self.model_values:
            model.value = f.model or TINY
            self.query_one("#model-path", Input).value = ""
        else:
            model.clear()
            self.query_one("#model-path", Input).value = f.model or ""
        self.show_error("")

    def show_error(self, text: str) -> None:
        self.query_one("#form-error", Static).update(text)

    def read(self) -> FleetForm:
        q = self.query_one
        path = q("#model-path", Input).value.strip()
        selected = q("#model", Select).value
        model = path or (selected if isinstance(selected, str) else None)
        if model is None:
            raise UserError("no model chosen", "pick a model or type the path of a .gguf file")
        preset = q("#preset", Select).value
        return FleetForm(
            model=model,
            instances=parse_int(q("#instances", Input).value, "instances", 1),
            parallel=parse_int(q("#parallel", Input).value, "parallel", 1),
            ctx_per_slot=parse_int(q("#ctx-per-slot", Input).value, "ctx per slot", 16),
            gpu_layers=parse_int(q("#gpu-layers", Input).value, "GPU layers", 0, optional=True),
            gpus=parse_gpus(q("#gpus", Input).value),
            policy=str(q("#policy", Select).value),
            preset=preset if isinstance(preset, str) else self.initial.preset,
        )

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"submit": self.action_submit, "cancel": self.action_cancel, "save": self.action_save}[str(event.button.id)]()

    def action_submit(self) -> None:
        try:
            form = self.read()
        except UserError as exc:
            self.show_error(exc.one_line())
            return
        self.dismiss(form)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_save(self) -> None:
        try:
            form = self.read()
        except UserError as exc:
            self.show_error(exc.one_line())
            return
        self.save(self.query_one("#preset-name", Input).value, form)

    @work(thread=True, exclusive=True, exit_on_error=False, group="form-save")
    def save(self, name: str, form: FleetForm) -> None:
        try:
            path = self.controller.save_preset(name, form)
        except UserError as exc:
            self.app.call_from_thread(self.show_error, exc.one_line())
            return
        self.app.call_from_thread(self.saved, path)

    def saved(self, path: Path) -> None:
        self.show_error("")
        self.notify(f"saved preset {path.stem} to {path}", title="preset saved")
