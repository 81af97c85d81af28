"""Plugins are entry points, built-in or third-party alike: ``s4edge.commands``
names the CLI's commands, ``s4edge.sources`` the node's alert sources, ``s4edge.decoders``
the detector's decoder families. Each is imported
only when it is used, and one whose extra is not installed is a one-line error that
names the extra to install, never a traceback.
"""

from __future__ import annotations

import importlib.util
import re
from importlib.metadata import Distribution, EntryPoint, entry_points
from typing import Any

COMMANDS = "s4edge.commands"
SOURCES = "s4edge.sources"
DECODERS = "s4edge.decoders"
# The import names that differ from their distribution's name on PyPI; the rest match once normalised.
DISTRIBUTION_OF = {
    "cv2": "opencv-python-headless",
    "paho": "paho-mqtt",
    "serial": "pyserial",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
}
# A Requires-Dist line: the name, the extras it asks for, and the extra that pulls it in (PEP 508).
_REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?[^;]*(?:;.*\bextra\s*==\s*[\"']([^\"']+))?")


class MissingExtra(Exception):
    """A plugin needs a package that only one of its distribution's extras installs."""


def plugins(group: str) -> dict[str, EntryPoint]:
    """The entry points of a group, by name; nothing is imported."""
    return {ep.name: ep for ep in entry_points(group=group)}


def load(entry_point: EntryPoint, what: str) -> Any:
    """Import a plugin; a third-party package it needs that is not installed raises ``MissingExtra``."""
    try:
        return entry_point.load()
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc, what, entry_point)
        if missing is None:
            raise
        raise missing from exc


def missing_extra(exc: ModuleNotFoundError, what: str, entry_point: EntryPoint) -> MissingExtra | None:
    """The error to show when ``exc`` is a third-party package that is not installed. None when
    it is a bug: a module of ours, or one missing inside a package that is installed."""
    top = (exc.name or "").partition(".")[0]
    dist = entry_point.dist
    if not top or top == "s4edge" or dist is None or _installed(top):
        return None
    extra = _extra_installing(dist, top, entry_point.extras)
    if extra is None:
        return None
    return MissingExtra(f"{what} needs the {extra} extra: pip install '{dist.name}[{extra}]' ({top} is not installed)")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a module without a spec
        return False


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _extras(dist: Distribution) -> dict[str, set[str]]:
    """Every extra of ``dist`` with the distributions it installs, its own extras expanded."""
    own = _normalise(dist.name)
    direct: dict[str, list[tuple[str, list[str]]]] = {}
    for line in dist.requires or []:
        match = _REQUIREMENT.match(line)
        if match and match[3]:
            asked = [e.strip() for e in (match[2] or "").split(",") if e.strip()]
            direct.setdefault(match[3], []).append((_normalise(match[1]), asked))

    def expand(extra: str, seen: set[str]) -> set[str]:
        seen.add(extra)
        names: set[str] = set()
        for name, asked in direct.get(extra, []):
            if name != own:
                names.add(name)
                continue
            for sub in set(asked) - seen:
                names |= expand(sub, seen)
        return names

    return {extra: expand(extra, set()) for extra in direct}


def _extra_installing(dist: Distribution, module: str, preferred: list[str]) -> str | None:
    """The plugin's own extra if it installs ``module``, else the smallest extra that does;
    the plugin's own extra when no extra names it (a dependency of a dependency)."""
    extras = _extras(dist)
    wanted = _normalise(DISTRIBUTION_OF.get(module, module))
    candidates = sorted(extras, key=lambda extra: (len(extras[extra]), extra))
    candidates = [extra for extra in candidates if wanted in extras[extra]]
    own = [extra for extra in preferred if extra in candidates] or candidates or preferred
    return own[0] if own else None
