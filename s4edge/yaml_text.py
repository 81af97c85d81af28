"""YAML as people write it in configs: PyYAML's safe loader without YAML 1.1's base-60 numbers.

YAML 1.1 reads an unquoted ``22:00`` as the integer 1320 (22 × 60) and ``1:30:00`` as
5400; YAML 1.2 dropped that form (YAML 1.2 §10.3.2, the core schema's int and float), and
every config that writes a time of day means the text. Here such a scalar stays a string,
which pydantic reads as the time it says. Every other tag resolves as ``yaml.safe_load``
resolves it.

``with_top_level`` sets top-level settings in such a file and keeps the rest as it was written.
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


def with_top_level(text: str, values: dict[str, Any]) -> str | None:
    """``text``, a YAML mapping as a person wrote it, with the top-level keys of ``values`` set: an
    entry whose value differs is written anew where it stands, a missing one after the last entry,
    and every other line (comments, ``0x48``, flow style, blank lines) stays as it was written. A
    round trip through ``yaml.safe_dump`` writes ``0x48`` as ``72`` and drops every comment.

    None where the text is no block mapping that can be edited so (flow style at the top, an
    anchor used across entries): the result must load as the old settings with ``values`` set."""
    try:
        root = yaml.compose(text, Loader=_Loader)
        old = load_yaml(text)
    except yaml.YAMLError:
        return None
    if not isinstance(root, yaml.MappingNode) or root.flow_style or not isinstance(old, dict):
        return None
    spans = {key.value: (key.start_mark.index, _line_end(text, _end_of(value))) for key, value in root.value}
    edits: list[tuple[int, int, str]] = []
    after_last = max((end for _, end in spans.values()), default=len(text))
    for key, value in values.items():
        if key in old and old[key] == value:
            continue
        entry = yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True)
        if key in spans:
            edits.append((*spans[key], entry))
        else:
            lead = "" if after_last == 0 or text[after_last - 1] == "\n" else "\n"
            edits.append((after_last, after_last, lead + entry))
    edited = text
    for start, end, entry in sorted(edits, key=lambda edit: edit[0], reverse=True):
        edited = edited[:start] + entry + edited[end:]
    try:
        return edited if load_yaml(edited) == {**old, **values} else None
    except yaml.YAMLError:
        return None


def _end_of(node: yaml.Node) -> yaml.Mark:
    """Where ``node``'s own text ends: a block collection's end mark lies past the comments and
    blank lines after it, at the next token, so it is its last item's end."""
    if not isinstance(node, yaml.CollectionNode) or node.flow_style or not node.value:
        return node.end_mark
    last = node.value[-1]
    return _end_of(last[1] if isinstance(node, yaml.MappingNode) else last)


def _line_end(text: str, mark: yaml.Mark) -> int:
    """The index past the end of the line ``mark`` ends on (its newline included)."""
    if mark.index > 0 and text[mark.index - 1] == "\n":  # a block scalar ends at the next line's start
        return mark.index
    newline = text.find("\n", mark.index)
    return len(text) if newline == -1 else newline + 1
