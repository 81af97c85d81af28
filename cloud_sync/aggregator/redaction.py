"""Credentials out of what the aggregator keeps: command arguments (a ``reload_config`` may carry
a config with an inline MQTT password) and the nodes' command results (an error may quote one)
are redacted before they are stored, so command history never serves them.

Redacted: the value of any key that names a credential (``password``, ``token``, ``secret``,
``api_key``, ``private_key``, …) in a mapping or in text (``key: value``, ``key=value``,
``"key": "value"``), the userinfo of URLs (RFC 3986 §3.2.1), PEM private key blocks, and
``Bearer`` tokens (RFC 6750 §2.1). Text that is a JSON or YAML mapping (a ``reload_config``'s
config) is redacted as that mapping and written back; other text is redacted line by line.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from s4edge.shown import CREDENTIAL, REDACTED
from s4edge.yaml_text import load_yaml

_CREDENTIAL_KEY = re.compile(CREDENTIAL, re.IGNORECASE)
_TEXT = [
    (
        re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL),
        rf"-----BEGIN \1PRIVATE KEY----- {REDACTED} -----END \1PRIVATE KEY-----",
    ),
    # a YAML block scalar (password: |): the lines indented deeper than its key (YAML 1.2 §8.1)
    (
        re.compile(
            rf"(?im)^([ \t]*)((?:- )?[\w.-]*(?:{CREDENTIAL})[\"']?[ \t]*:[ \t]*)[|>][^\n]*"
            r"(?:\n[ \t]*(?=\n)|\n\1[ \t]+\S[^\n]*)*"
        ),
        rf"\1\2{REDACTED}",
    ),
    # key, then a separator, then a quoted value ('' and \" escape a quote) or the rest of the line
    (
        re.compile(
            rf"(?i)([\w.-]*(?:{CREDENTIAL})[\"']?\s*[:=]\s*)(\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\n]|'')*'|[^\s\"'][^\n]*)"
        ),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^\s/?#@]+@"), rf"\1{REDACTED}@"),
    (re.compile(r"(?i)\b(bearer\s+)[\w.~+/=-]+"), rf"\1{REDACTED}"),
]


def redact(value: Any) -> Any:
    """``value`` (text, or JSON-like data) with every credential replaced by ``***``."""
    if isinstance(value, str):
        mapping = _mapping(value)
        if mapping is not None and (cleaned := redact(mapping)) != mapping:
            return json.dumps(cleaned) if value.lstrip().startswith("{") else yaml.safe_dump(cleaned, sort_keys=False)
        for pattern, replacement in _TEXT:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, dict):
        return {k: REDACTED if _CREDENTIAL_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def _mapping(text: str) -> dict[Any, Any] | None:
    """The mapping ``text`` holds as JSON or YAML, or None."""
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = load_yaml(text)
        except yaml.YAMLError:
            return None
    return data if isinstance(data, dict) else None


def first_line(exc: BaseException | None) -> str:
    """An error's first line, at most 200 characters and with no credential: for a log or a reply."""
    return str(redact(str(exc).split("\n", 1)[0][:200]))
