"""What the last validation of the site configuration said: a cache for the read-only commands.

Validating ``pacs.yaml`` (config.py) means importing pydantic and building the settings models: ~200 ms of a
new process's start, more than the rest of a `pacs search` together. ``load_validated`` keeps what a successful
validation produced in the user's cache folder, one JSON file per configuration file, and reuses it while the
file's bytes (SHA-256) and the code that validated them (size and mtime of the modules defining the settings)
are unchanged: the same bytes validated by the same code give the same result. Any other case (no entry, other
bytes or code, an entry damaged or unreadable, a cache folder that cannot be written) validates with
``pacs_assets.config.load_config``, so a mistake in the file is reported with the same sentence as ever.

This module imports nothing beyond the standard library (and no dataclasses): it is what a new process reads
first. It lives with the CLI, its only user, so the configuration's own modules never import it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from pacs_assets.config_file import config_path

try:  # Python's own SHA-256 (the same digest): hashlib would load OpenSSL first, ~4 ms of a new process
    from _sha256 import sha256
except ImportError:  # Python >= 3.12 names it _sha2; a build without it has hashlib's
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

CACHE_FORMAT = 1
_PACKAGE = Path(__file__).resolve().parents[1]


# A NamedTuple, not a dataclass: `pacs search` then never imports dataclasses (and inspect), ~9 ms of its start.
class NasView(NamedTuple):
    id: str
    kind: str
    root: Path


class IndexView(NamedTuple):
    path: Path


class ConfigView(NamedTuple):
    """The part of a validated ``PacsConfig`` the read-only commands use, with the same attribute names."""

    nas: list[NasView]
    index: IndexView
    timezone: str
    source_file: Path


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pacs_assets"


def _code_stamp() -> list:
    """Size and mtime of the modules whose models decide what is valid: an edited or upgraded one invalidates."""
    files = [_PACKAGE / "config.py", _PACKAGE / "nas" / "base.py", _PACKAGE / "orthanc" / "orthanc_settings.py"]
    with os.scandir(_PACKAGE / "nas") as entries:
        files += sorted(Path(e.path) / "settings.py" for e in entries if e.is_dir() and not e.name.startswith("_"))
    stamp = []
    for file in files:
        try:
            st = os.stat(file)
        except FileNotFoundError:
            continue  # a folder that is no kind
        stamp.append([file.relative_to(_PACKAGE).as_posix(), st.st_size, st.st_mtime_ns])
    return stamp


def _view(document: dict, source_file: Path) -> ConfigView:
    return ConfigView(nas=[NasView(n["id"], n["kind"], Path(n["root"])) for n in document["nas"]],
                      index=IndexView(Path(document["index"]["path"])), timezone=document["timezone"],
                      source_file=source_file)


def _document(config) -> dict:
    return {"nas": [{"id": n.id, "kind": n.kind, "root": str(n.root)} for n in config.nas],
            "index": {"path": str(config.index.path)}, "timezone": config.timezone}


def _remember(entry: Path, key: dict, document: dict) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
        # Owner only: the entry names the site's folders. Written whole, then renamed: never read half-written.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"key": key, "config": document}, fh)
        os.replace(tmp, entry)
    except OSError:
        pass  # no cache folder (a read-only home): the next command validates again, nothing else changes


def load_validated(explicit: str | os.PathLike | None = None) -> ConfigView:
    """The configuration as ``load_config`` validates it (the read-only commands' view), from the cache when the
    file and the code are the ones it was validated with; raises the same ConfigError sentences."""
    path = config_path(explicit)
    try:
        resolved = path.resolve()
        key = {"format": CACHE_FORMAT, "file": str(resolved),
               "sha256": sha256(resolved.read_bytes()).hexdigest(), "code": _code_stamp()}
    except OSError:
        key = None  # unreadable: load_config says why, in its own sentence
    entry = cache_dir() / f"config-{sha256(str(path.absolute()).encode()).hexdigest()[:24]}.json"
    if key is not None:
        try:
            with open(entry, encoding="utf-8") as fh:
                cached = json.load(fh)
            if cached["key"] == key:
                return _view(cached["config"], path)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no entry, or a damaged one: never trusted, validated again below
    from pacs_assets.config import load_config  # pydantic: only when the cache cannot answer

    document = _document(load_config(path))
    if key is not None:
        _remember(entry, key, document)
    return _view(document, path)
