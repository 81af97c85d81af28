"""YAML as people write it in configs: PyYAML's safe loader without YAML 1.1's base-60 numbers.

YAML 1.1 reads an unquoted ``22:00`` as the integer 1320 (22 × 60) and ``1:30:00`` as
5400; YAML 1.2 dropped that form (YAML 1.2 §10.3.2, the core schema's int and float), and
every config that writes a time of day means the text. Here such a scalar stays a string,
which pydantic reads as the time it says. Every other tag resolves as ``yaml.safe_load``
resolves it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# PyYAML's int and float resolvers (yaml/resolver.py) with the sexagesimal alternatives left out
_INT = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, except that ``22:00`` is the string ``"22:00"``; raises
    ``yaml.YAMLError`` as it does."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where YAML text breaks, never the text itself: PyYAML's message quotes the line."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return "not valid YAML"
    where = f"not valid YAML (line {mark.line + 1}, column {mark.column + 1})"
    if "'\\t'" in (getattr(exc, "problem", None) or ""):  # PyYAML's "found character '\t' ...": the tab, no text
        return f"{where}: a tab; YAML indents with spaces only (YAML 1.2 §6.1)"
    return where
