"""Text as a message, a log line or an alert may show it: URLs without their user, password
or query credentials. Every layer uses it (camera URLs in drivers, broker and store URLs,
SIP URIs), so it imports nothing of ours."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

REDACTED = "***"
CREDENTIAL = r"passw(?:or)?d|passphrase|secret|token|api[_-]?key|private[_-]?key|credentials?"
# a query key that names a credential once percent-decoded (pass%77ord is password); cameras
# take ?user=admin&pwd=… or &pass=… too
_QUERY_CREDENTIAL = re.compile(rf"{CREDENTIAL}|^(?:pwd|pass|auth|sig|signature)$", re.IGNORECASE)


def hide_userinfo(url: str) -> str:
    """``url`` for a message or a log: whatever stands between ``://`` and its last ``@``
    (user and password, RFC 3986 §3.2.1; an unencoded ``@`` in a password included) is ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # a URL missing its // ('mqtts:user:pass@host') holds the password all the same
        scheme, sep, rest = url.partition(":")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}{sep}{REDACTED}@{rest.rpartition('@')[2]}"


def hide_query_credentials(url: str) -> str:
    """``url`` with the value of every query parameter whose key names a credential
    (``?token=…``, ``&password=…``, percent-encoded or not) as ``***``."""
    head, sep, query = url.partition("?")
    if not sep:
        return url
    query, hash_sep, fragment = query.partition("#")
    params = []
    for param in query.split("&"):
        key, eq, _ = param.partition("=")
        params.append(f"{key}={REDACTED}" if eq and _QUERY_CREDENTIAL.search(unquote_plus(key)) else param)
    return f"{head}?{'&'.join(params)}{hash_sep}{fragment}"


def shown_url(url: str) -> str:
    """``url`` with neither its userinfo nor any query credential."""
    return hide_query_credentials(hide_userinfo(url))
