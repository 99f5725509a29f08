"""`sweep report DIR --html FILE`: one self-contained page, its inline SVG charts parsed and counted."""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llama_tui.core import sweep
from llama_tui.core.sweep import cells, charts, results

from test_sweep_core import Clock, FakeRunner, cfg_for, perf, run_fake


class Tags(HTMLParser):
    """Every start tag with its attributes; fails on tags left open at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.open: list[str] = []
        self.text: list[str] = []

    VOID = {"meta", "br", "hr", "img", "input", "link", "circle", "line", "rect", "polyline", "path"}

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.open and self.open[-1] == tag, (tag, self.open[-5:])
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture
def sweep_dir(tiny_model: Path, tmp_path: Path) -> Path:
    rng = random.Random(4)
    out = tmp_path / "s"
    clock = Clock()  # the fake runner moves it: 2 s per fleet start, 3.5 s per cell
    runner = FakeRunner(perf=lambda s, c, n: perf(s, c, n) * (1 + 0.04 * rng.gauss(0, 1)), clock=clock)
    run_fake(cfg_for(tiny_model, out, instances=(1, 2), parallel=(1, 2, 4), concurrency=(2, 4, 8), threads=(1,),
                     repeats=2, command=("llama-tui", "sweep", "--repeats", "2")), runner, clock=clock)
    return out


def svgs(page: str) -> dict[str, ET.Element]:
    """Each section's SVG, parsed as XML (so it must be well-formed)."""
    out = {}
    for sec in re.finditer(r'<section id="(\w+)">(.*?)</section>', page, re.S):
        m = re.search(r"<svg .*?</svg>", sec.group(2), re.S)
        if m:
            out[sec.group(1)] = ET.fromstring(m.group(0))
    return out


def series(svg: ET.Element) -> list[str]:
    return [g.get("data-series") for g in svg.iter("g") if g.get("class") == "series"]


def test_the_page_is_self_contained_and_holds_every_chart(sweep_dir: Path, tmp_path: Path) -> None:
    path = sweep.write_page(sweep_dir, tmp_path / "report.html")
    page = path.read_text()
    parser = Tags()
    parser.feed(page)
    parser.close()
    assert parser.open == [], parser.open  # every element closed
    names = [t for t, _ in parser.tags]
    assert names[0] == "html" and "script" not in names and "link" not in names and "img" not in names
    assert "iframe" not in names and "object" not in names
    for tag, attrs in parser.tags:
        assert "src" not in attrs, (tag, attrs)
        assert attrs.get("href", "#").startswith("#"), (tag, attrs)
    assert not re.search(r"https?:|url\(|@import|@font-face|//[a-z]", page, re.I)

    rows = results.read_rows(sweep_dir / "results.jsonl").rows
    found = cells.from_rows(rows)
    charts_ = svgs(page)
    assert set(charts_) == {"heatmap", "ramps", "frontier", "time"}
    assert len(series(charts_["heatmap"])) == 6  # one rectangle per shape with a number
    assert sorted(series(charts_["ramps"])) == ["1x1 t1", "1x2 t1", "1x4 t1", "2x1 t1", "2x2 t1", "2x4 t1"]
    assert len([x for x in charts_["ramps"].iter("line") if x.get("class") == "ci"]) == len(found) == 18
    assert series(charts_["frontier"]) == ["cells", "frontier"]
    assert len(list(charts_["frontier"].find("g").iter("circle"))) == 18  # every good cell
    assert {"fleet starts", "warm-ups", "windows", "cell overhead"} <= set(series(charts_["time"]))

    text = " ".join(parser.text)
    v = cells.verdict(found)
    top = v.best.summary()
    assert f"{top['output_tok_s']:,.0f} tok/s" in text
    assert ("distinguishable" if v.distinguishable else "statistically tied") in text
    assert "llama-tui fleet up --model" in text and "--instances 2 --parallel 4" in text
    for fact in ("llama-tui tiny random model", "b0-fake", "physical", "llama-tui sweep --repeats 2", "windows"):
        assert fact in text, fact
    best_rows = [a for t, a in parser.tags if t == "tr" and a.get("class") == "best"]
    assert len(best_rows) == 1


def test_cli_report_html_writes_the_page_and_still_prints_the_report(sweep_dir: Path, tmp_path: Path) -> None:
    from conftest import run_cli

    page = tmp_path / "out" / "r.html"
    proc = run_cli("sweep", "report", str(sweep_dir), "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {page}" in proc.stderr and "best output tok/s by instances x parallel" in proc.stdout
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_nice_ticks_and_labels() -> None:
    assert charts.nice_ticks(4300) == [0, 1000, 2000, 3000, 4000, 5000]
    assert charts.nice_ticks(87) == [0, 20, 40, 60, 80, 100]
    assert charts.nice_ticks(0.9) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert charts._tick(2000, [0, 1000, 2000]) == "2,000" and charts._tick(0.4, [0, 0.2]) == "0.4"
    svg = ET.fromstring(charts.lines([]))  # no data: still a well-formed, empty chart
    assert series(svg) == []
