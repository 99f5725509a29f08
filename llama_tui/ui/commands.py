"""The command palette (ctrl+p) offers the same actions as the keys."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

# (title, help, action string run on the app)
PALETTE = (
    ("Start fleet", "start the configured fleet (s)", "start"),
    ("Stop fleet", "stop every instance and NGINX; asks first (x)", "stop"),
    ("Scale up", "add one instance (+)", "scale(1)"),
    ("Scale down", "remove one instance (-)", "scale(-1)"),
    ("Restart selected instance", "restart the instance under the cursor (r)", "restart"),
    ("Benchmark ramp", "run the preset's concurrency ramp through NGINX, in its own process (b)", "bench"),
    ("Cancel benchmark", "stop the running benchmark", "bench_cancel"),
    ("Sweep", "open the sweep screen (w)", "sweep"),
    ("Start sweep", "sweep instances x parallel x concurrency, in its own process", "sweep_start"),
    ("Cancel sweep", "stop the running sweep", "sweep_cancel"),
    ("Apply best sweep result", "restart the fleet with the best shape the sweep found", "apply_best"),
    ("Cycle balancing policy", "next NGINX policy; NGINX reloads (p)", "policy"),
    ("Logs", "follow an instance's log or NGINX's error log (l)", "logs"),
    ("Edit fleet / presets", "the fleet form: model, shape, GPUs, policy; save a preset (e)", "edit"),
    ("Save SVG screenshot", "write the screen to an SVG file (ctrl+s)", "screenshot_svg"),
    ("Help", "keys and what the numbers mean (?)", "help"),
    ("Quit (fleet keeps running)", "leave the TUI; the fleet keeps serving (q)", "quit"),
)


class FleetCommands(Provider):
    async def _run(self, action: str) -> None:
        await self.app.run_action(action)

    async def discover(self) -> Hits:
        for title, help_text, action in PALETTE:
            yield DiscoveryHit(title, partial(self._run, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, action in PALETTE:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self._run, action), help=help_text)
