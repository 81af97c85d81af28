"""Credentials out of what the aggregator keeps: command arguments (a ``reload_config`` may carry
a config with an inline MQTT password) and the nodes' command results (an error may quote one)
are redacted before they are stored, so command history never serves them.

Redacted: the value of any key that names a credential (``password``, ``token``, ``secret``,
``api_key``, ``private_key``, …) in a mapping or in text (``key: value``, ``key=value``,
``"key": "value"``), the userinfo of URLs (RFC 3986 §3.2.1), PEM private key blocks, and
``Bearer`` tokens (RFC 6750 §2.1).
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
CREDENTIAL = r"passw(?:or)?d|passphrase|secret|token|api[_-]?key|private[_-]?key|credentials?"
_CREDENTIAL_KEY = re.compile(CREDENTIAL, re.IGNORECASE)
_TEXT = [
    (
        re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL),
        rf"-----BEGIN \1PRIVATE KEY----- {REDACTED} -----END \1PRIVATE KEY-----",
    ),
    # key, then a separator, then a quoted value or the rest of the line up to a list separator:
    # YAML allows a plain scalar with spaces (password: correct horse battery staple)
    (
        re.compile(rf"(?i)([\w.-]*(?:{CREDENTIAL})[\"']?\s*[:=]\s*)(\"[^\"\n]*\"|'[^'\n]*'|[^\s\"'][^\n,;&}}\]]*)"),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^\s/?#@]+@"), rf"\1{REDACTED}@"),
    (re.compile(r"(?i)\b(bearer\s+)[\w.~+/=-]+"), rf"\1{REDACTED}"),
]


def redact(value: Any) -> Any:
    """``value`` (text, or JSON-like data) with every credential replaced by ``***``."""
    if isinstance(value, str):
        for pattern, replacement in _TEXT:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, dict):
        return {k: REDACTED if _CREDENTIAL_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value
