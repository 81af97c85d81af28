"""The two files mosquitto reads to authenticate and authorise the fleet: ``password_file``
and ``acl_file`` (mosquitto.conf(5)). Both are rendered whole from the fleet registry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from s4edge.cloud_sync.messages import SUFFIX, TO_NODE, TOPIC_ROOT

# mosquitto_passwd's own defaults for the $7$ (PBKDF2-HMAC-SHA512) format:
# 12-byte salt, 64-byte digest, 101 iterations. The fleet's passwords are 256-bit random
# tokens, so iterations add nothing against guessing and only cost the broker CPU on
# every reconnect storm.
PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12


def new_password() -> str:
    return secrets.token_urlsafe(32)


def password_hash(password: str, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """``$7$iterations$salt_b64$hash_b64`` as mosquitto 2.0 writes it (src/password_mosq.c)."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(encoded: str, password: str) -> bool:
    try:
        _, kind, iterations, salt_b64, digest_b64 = encoded.split("$")
        salt, digest = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        rounds = int(iterations)
    except ValueError:
        return False
    if kind != "7":
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds, len(digest))
    return hmac.compare_digest(got, digest)


def node_topics(site: str, node_id: str) -> tuple[list[str], list[str]]:
    """(write, read) topics of one node: its own outbound suffixes, and its own commands and
    receipts. No node may write a receipt: it would make another node forget unstored alerts.

    The write list names every outbound suffix instead of ``{node}/#`` because mosquitto's
    ``topic deny`` refuses read as well as write, so ``#`` minus ``cmd/#`` cannot be said.
    """
    base = f"{TOPIC_ROOT}/{site}/{node_id}"
    write = [f"{base}/{suffix}" for kind, suffix in sorted(SUFFIX.items()) if kind not in TO_NODE]
    return write, [f"{base}/cmd/#", f"{base}/{SUFFIX['receipt']}"]


def aggregator_topics() -> tuple[list[str], list[str]]:
    """The aggregator reads the whole fleet and writes commands and receipts only."""
    return [f"{TOPIC_ROOT}/+/+/cmd/#", f"{TOPIC_ROOT}/+/+/{SUFFIX['receipt']}"], [f"{TOPIC_ROOT}/#"]


def acl_block(username: str, comment: str, write: list[str], read: list[str]) -> str:
    lines = [f"# {comment}", f"user {username}"]
    lines += [f"topic write {t}" for t in write]
    lines += [f"topic read {t}" for t in read]
    return "\n".join(lines) + "\n"


ACL_HEADER = """\
# s4edge fleet ACL (mosquitto acl_file). Rendered by `s4edge provision` and
# `s4edge fleet aggregator-credentials` from fleet.json: edits here are overwritten.
# A user with no block below may do nothing; clients without a username match no block.
"""
