"""The non-INVITE client transaction of RFC 3261 §17.1.2 over UDP, TCP and TLS.

Every way a send can end is a ``Delivery`` with an ``outcome``; nothing here raises
on what the network or the peer does.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, Literal

from s4edge.cloud_sync.ng112.sip import (
    EmergencyMessage,
    Proto,
    SipError,
    SipResponse,
    SipTarget,
    content_length,
    new_branch,
    parse_head,
    parse_response,
    parse_target,
    shown_uri,
    split_head,
)

REDIRECT_HOPS: Final = 3  # 3xx followed at most this many times in one attempt: no redirect loop
REDIRECTS: Final = (301, 302)  # to the Contact (RFC 3261 §21.3); 305 and 380 are no onward address
# RFC 3261 §18.1.1: without a known path MTU, a request over 1300 bytes goes over TCP.
UDP_LIMIT: Final = 1300
MAX_DATAGRAM: Final = 65507
MAX_RESPONSE: Final = 64 * 1024

Outcome = Literal["ok", "rejected", "timeout", "garbage", "closed", "unreachable", "too_large"]


@dataclass(frozen=True)
class Timers:
    """RFC 3261 §17.1.2.2 timers; T1 is configurable so that tests run fast."""

    t1: float = 0.5
    t2: float = 4.0

    @property
    def f(self) -> float:
        return 64 * self.t1


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    transport: Proto
    transmissions: int
    latency_s: float | None = None
    response: SipResponse | None = None
    detail: str = ""

    @property
    def code(self) -> int | None:
        return self.response.code if self.response else None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def choose_transport(target: SipTarget, size: int) -> Proto:
    if target.transport is not None:
        return target.transport
    return "tcp" if size > UDP_LIMIT else "udp"


def _first_contact(response: SipResponse) -> SipTarget | None:
    """The first Contact of a redirect as a target, or None (RFC 3261 §20.10: name-addr or a bare URI)."""
    value = response.header("contact") or ""
    found = re.match(r'\s*(?:"[^"]*"\s*)?<([^>]+)>|\s*([^,;\s]+)', value)
    if not found:
        return None
    try:
        return parse_target(found[1] or found[2])
    except SipError:
        return None


def sent_by(host: str, port: int) -> str:
    """The Via's sent-by: an IPv6 address in brackets (RFC 3261 §25.1 ``IPv6reference``),
    or ``::1:5060`` reads as one address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _final(response: SipResponse, proto: Proto, transmissions: int, latency: float) -> Delivery:
    outcome: Outcome = "ok" if 200 <= response.code < 300 else "rejected"
    detail = f"{response.code} {response.reason}"
    if response.code == 415 and (accept := response.header("accept")):
        # RFC 3261 §21.4.13: the 415 lists what the PSAP takes; its integrator needs to know
        detail += f"; the PSAP accepts {accept[:200]}"
    return Delivery(outcome, proto, transmissions, latency, response, detail)


def _ours(response: SipResponse, branch: str) -> bool:
    # RFC 3261 §17.1.3: match the top Via branch and the CSeq method.
    cseq = response.header("cseq") or ""
    return response.branch == branch and cseq.upper().endswith("MESSAGE")


class Transaction:
    """Send one EmergencyMessage and wait for its final response."""

    def __init__(
        self,
        timers: Timers = Timers(),
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        redirect_hosts: frozenset[str] = frozenset(),
    ) -> None:
        """``redirect_hosts``: where a 301/302 may send a call on to (an ESRP naming the PSAP for
        the location); none by default, for an emergency call's data goes where it is sent."""
        self.timers = timers
        self.tls_context = tls_context
        self.clock = clock
        self.redirect_hosts = frozenset(host.lower() for host in redirect_hosts)

    def send(self, message: EmergencyMessage, target: SipTarget) -> Delivery:
        """One request to ``target``, within one Timer F, redirects and fallback included (the
        forwarder's claim on a call counts on it). A 301/302 sends it on to the first Contact,
        up to ``REDIRECT_HOPS`` times (RFC 3261 §8.1.3.4: an ESRP redirects to the PSAP that
        serves the location), where the Contact's host is one of ``redirect_hosts`` and it is
        no less secure than the request that was redirected, on every hop: never from TLS to
        plain text, nor from a SIPS URI to a SIP one (§8.1.3.4, §26.2.2, RFC 5630)."""
        deadline = self.clock() + self.timers.f
        delivery = self._send_once(message, target, deadline)
        request, hop = message, target
        for _ in range(REDIRECT_HOPS):
            response = delivery.response
            if response is None or response.code not in REDIRECTS:
                break
            contact = _first_contact(response)
            # each hop against the one it redirects: plain → TLS → plain compared with the first
            # target alone sent the call on in clear text from a hop reached over TLS
            refused = self._refused_redirect(hop, contact)
            if contact is None or refused:
                why = refused or "no Contact to follow"
                return replace(delivery, detail=f"{delivery.detail}, not followed: {why}")
            if self.clock() >= deadline:
                return replace(delivery, detail=f"{delivery.detail}, not followed: Timer F has run out")
            # RFC 3261 §8.1.3.4: the Contact's URI is the onward request's Request-URI, and §8.1.3.5,
            # §20.16: a new transaction of the same call, its CSeq one higher
            request, hop = request.redirected(contact.uri), contact
            onward = self._send_once(request, contact, deadline)
            delivery = replace(onward, detail=f"{onward.detail} (after {response.code} to {shown_uri(contact.uri)})")
        return delivery

    def _refused_redirect(self, redirected: SipTarget, contact: SipTarget | None) -> str:
        """Why the request sent to ``redirected`` may not go on to ``contact``, or ""."""
        if contact is None:
            return ""
        if contact.host.lower() not in self.redirect_hosts:
            return f"{contact.host} is not among ng112.redirect_hosts"
        if redirected.transport == "tls" and contact.transport != "tls":
            return "it leaves TLS for plain text"
        if redirected.sips and not contact.sips:
            # RFC 3261 §8.1.3.4 allows it only with the user told, and nobody watches a forward; a
            # sip: URI's ;transport=tls secures one hop, not the way on to the PSAP (§26.2.2, RFC 5630)
            return "it leaves a sips: URI for a sip: one"
        return ""

    def _send_once(self, message: EmergencyMessage, target: SipTarget, deadline: float) -> Delivery:
        branch = new_branch()
        # The size decides the transport before the Via is known; a Via is under 100 bytes.
        probe = message.render("udp", "255.255.255.255:65535", branch)
        proto = choose_transport(target, len(probe))
        if proto == "udp":
            if len(probe) > MAX_DATAGRAM:
                return Delivery("too_large", proto, 0, detail=f"{len(probe)} bytes do not fit a UDP datagram")
            return self._udp(message, target, branch, deadline)
        # RFC 3261 §18.1.1: TCP for the size alone, where UDP was the transport (no ;transport=)
        size_forced = target.transport is None and len(probe) <= MAX_DATAGRAM
        return self._stream(message, target, branch, proto, deadline, udp_fallback=size_forced)

    def _udp(self, message: EmergencyMessage, target: SipTarget, branch: str, deadline: float) -> Delivery:
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((target.host, target.port))
            except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA cannot encode
                return Delivery("unreachable", "udp", 0, detail=f"{target.host}:{target.port}: {exc}")
            host, port = sock.getsockname()[:2]
            if sock.getpeername()[:2] == (host, port):
                # The kernel gave the socket the target's own port, as it can while nothing is bound
                # there: every "answer" would be this request coming back.
                return Delivery("unreachable", "udp", 0, detail=f"{target.host}:{target.port}: nothing listens there")
            data = message.render("udp", sent_by(host, port), branch)
            start = self.clock()
            timer_f = min(start + self.timers.f, deadline)
            interval = self.timers.t1
            timer_e = start + interval
            transmissions = 0
            proceeding = False
            junk = ""
            while True:
                now = self.clock()
                if transmissions == 0 or now >= timer_e:
                    if transmissions:
                        # RFC 3261 §17.1.2.2: Timer E doubles up to T2; in Proceeding it stays at T2.
                        interval = self.timers.t2 if proceeding else min(2 * interval, self.timers.t2)
                        timer_e = now + interval
                    try:
                        sock.send(data)
                    except OSError as exc:
                        return Delivery("unreachable", "udp", transmissions, detail=str(exc))
                    transmissions += 1
                if now >= timer_f:
                    if junk:
                        return Delivery("garbage", "udp", transmissions, detail=f"only unparseable answers: {junk}")
                    return Delivery(
                        "timeout", "udp", transmissions, detail=f"no final response in {self.timers.f:g} s (Timer F)"
                    )
                sock.settimeout(max(0.0005, min(timer_e, timer_f) - now))
                try:
                    datagram = sock.recv(MAX_RESPONSE)
                except TimeoutError:
                    continue
                except OSError as exc:
                    # ICMP port unreachable shows up as ECONNREFUSED on a connected socket.
                    return Delivery("unreachable", "udp", transmissions, detail=f"{target.host}:{target.port}: {exc}")
                try:
                    response = parse_response(datagram)
                except SipError as exc:
                    junk = str(exc)  # RFC 3261 §18.1.2: a malformed datagram is discarded
                    continue
                if not _ours(response, branch):
                    continue
                if response.code < 200:
                    proceeding = True
                    continue
                return _final(response, "udp", transmissions, self.clock() - start)

    def _stream(
        self,
        message: EmergencyMessage,
        target: SipTarget,
        branch: str,
        proto: Proto,
        deadline: float,
        *,
        udp_fallback: bool = False,
    ) -> Delivery:
        start = self.clock()
        timer_f = min(start + self.timers.f, deadline)

        def left() -> float:
            return max(0.001, timer_f - self.clock())

        try:
            raw = socket.create_connection((target.host, target.port), timeout=left())
        except TimeoutError:
            return Delivery("timeout", proto, 0, detail=f"no connection in {self.timers.f:g} s (Timer F)")
        except (ConnectionRefusedError, ConnectionResetError) as exc:
            if udp_fallback:  # RFC 3261 §18.1.1: a reset or refusal of a size-forced TCP: the request goes over UDP
                return self._udp(message, target, new_branch(), deadline)
            return Delivery("unreachable", proto, 0, detail=f"{target.host}:{target.port}: {exc}")
        except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA cannot encode
            return Delivery("unreachable", proto, 0, detail=f"{target.host}:{target.port}: {exc}")
        sock: socket.socket = raw
        try:
            if proto == "tls":
                context = self.tls_context or ssl.create_default_context()
                sock = context.wrap_socket(raw, server_hostname=target.host)
            host, port = sock.getsockname()[:2]
            sock.sendall(message.render(proto, sent_by(host, port), branch))
            # RFC 3261 §17.1.2.2: no retransmission over a reliable transport; Timer F still runs.
            buffer = b""
            while True:
                parts = split_head(buffer)
                if parts is not None:
                    code, reason, headers = parse_head(parts[0])
                    size = content_length(headers)
                    if len(parts[1]) >= size:
                        response = SipResponse(code, reason, headers, parts[1][:size])
                        buffer = parts[1][size:]
                        if _ours(response, branch) and code >= 200:
                            return _final(response, proto, 1, self.clock() - start)
                        continue
                if len(buffer) > MAX_RESPONSE:
                    return Delivery(
                        "garbage", proto, 1, detail=f"over {MAX_RESPONSE} bytes without a complete response"
                    )
                sock.settimeout(left())
                chunk = sock.recv(16384)
                if not chunk:
                    return Delivery("closed", proto, 1, detail="the peer closed the connection before a final response")
                buffer += chunk
        except SipError as exc:
            return Delivery("garbage", proto, 1, detail=str(exc))
        except TimeoutError:
            return Delivery("timeout", proto, 1, detail=f"no final response in {self.timers.f:g} s (Timer F)")
        except ssl.SSLError as exc:
            return Delivery("unreachable", proto, 0, detail=f"TLS: {exc}")
        except OSError as exc:
            return Delivery("closed", proto, 1, detail=str(exc))
        finally:
            sock.close()


def send_message(message: EmergencyMessage, target: SipTarget, timers: Timers = Timers()) -> Delivery:
    return Transaction(timers).send(message, target)
