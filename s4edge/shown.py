"""Text as a message, a log line or an alert may show it: URLs without their user, password
or query credentials. Every layer uses it (camera URLs in drivers, broker and store URLs,
SIP URIs), so it imports nothing of ours."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

REDACTED = "***"
CREDENTIAL = r"passw(?:or)?d|passphrase|secret|token|api[_-]?key|private[_-]?key|credentials?"
# a parameter's key that names a credential once percent-decoded (pass%77ord is password);
# cameras take ?user=admin&pwd=…, &psw=…, &loginpas=… too, and signed URLs &X-Amz-Signature=…
_QUERY_CREDENTIAL = re.compile(
    rf"{CREDENTIAL}|^(?:pwd|pass|psw|loginpas\w*|auth\w*|jwt|key|sig)$|signature$", re.IGNORECASE
)


def hide_userinfo(url: str) -> str:
    """``url`` for a message or a log: whatever stands between ``://`` and its last ``@``
    (user and password, RFC 3986 §3.2.1; an unencoded ``@`` in a password included) is ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # a URL missing its // ('mqtts:user:pass@host') holds the password all the same
        scheme, sep, rest = url.partition(":")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}{sep}{REDACTED}@{rest.rpartition('@')[2]}"


def _hide_params(text: str) -> str:
    """``key=value`` pairs split by ``&`` or ``;``: those whose key names a credential, ``key=***``."""
    parts = re.split(r"([&;])", text)
    for i, part in enumerate(parts):
        key, eq, _ = part.partition("=")
        if eq and _QUERY_CREDENTIAL.search(unquote_plus(key.strip())):
            parts[i] = f"{key}={REDACTED}"
    return "".join(parts)


def hide_query_credentials(url: str) -> str:
    """``url`` with the value of every parameter whose key names a credential (``?token=…``,
    ``&password=…``, percent-encoded or not) as ``***``: in the query, in ``;``-parameters of
    the path (``rtsp://cam/live;password=…``) and in the fragment (``#token=…``)."""
    rest, hash_sep, fragment = url.partition("#")
    head, sep, query = rest.partition("?")
    path_from = head.find("/", head.find("://") + 3) if "://" in head else -1
    if path_from >= 0:
        head = head[:path_from] + _hide_params(head[path_from:])
    return f"{head}{sep}{_hide_params(query)}{hash_sep}{_hide_params(fragment)}"


# GStreamer elements' credential properties (rtspsrc user-id/user-pw, souphttpsrc proxy-pw, …)
_GST_CREDENTIAL = re.compile(r"\b((?:user|proxy)-(?:id|pw)|passw(?:or)?d)=(\"[^\"]*\"|'[^']*'|\S+)", re.IGNORECASE)


def shown_url(url: str) -> str:
    """``url`` (or a GStreamer pipeline holding one) with neither its userinfo nor any
    credential parameter or property."""
    return _GST_CREDENTIAL.sub(rf"\1={REDACTED}", hide_query_credentials(hide_userinfo(url)))
