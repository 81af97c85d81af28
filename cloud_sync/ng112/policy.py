"""Which alerts go to the PSAP, per site, and how (the NG112 config, loadable from YAML)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from s4edge.cloud_sync.messages import KNOWN_KINDS, PRE_ALARM, SEVERITIES, Alert, Kind, Severity
from s4edge.cloud_sync.ng112.sip import SOS, SipError, parse_target, shown_uri
from s4edge.cloud_sync.ng112.transport import Timers
from s4edge.yaml_text import load_yaml

Mode = Literal["auto", "confirm"]
RuleName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
# What every call carries is checked here, not when the first call fails to compose:
# CAP 1.2 §3.2.1: <sender> and <addresses> hold no space, comma, '<' or '&'.
_CAP_RESTRICTED = re.compile(r"[\s,<&]")
# CAP 1.2 <language> is an xs:language (XML Schema Part 2 §3.3.3, RFC 3066 tags).
_LANGUAGE = re.compile(r"^[a-zA-Z]{1,8}(?:-[a-zA-Z0-9]{1,8})*$")
# RFC 3261 §25.1 hostname: dot-separated labels of letters, digits and inner hyphens.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
# RFC 5031 §4.2: urn:service:sos, or one of its sub-services (sos.fire, sos.police, …).
_SOS_URN = re.compile(r"^urn:service:sos(?:\.[A-Za-z0-9-]+)*$", re.IGNORECASE)


def _sip_uri_sent(value: str, element: str) -> str:
    """A SIP URI that goes out with every call (the From or the Request-URI, and CAP ``element``)."""
    shown = shown_uri(value)
    try:
        parse_target(value)
    except SipError as exc:
        raise ValueError(str(exc)) from None
    if shown != value.strip():  # RFC 3261 §19.1.1: a password in a SIP URI is NOT RECOMMENDED
        raise ValueError(f"{shown!r} holds a password, which every call would show the PSAP")
    if _CAP_RESTRICTED.search(value.strip()):
        raise ValueError(f"{shown!r} holds a space, comma, '<' or '&', which CAP 1.2 §3.2.1 refuses in <{element}>")
    return value.strip()


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SitePolicy(_Config):
    kinds: list[Kind] = Field(default_factory=lambda: ["gas", "co", "smoke", "flame", "nir_match", "escalation"])
    min_severity: Severity = "Severe"
    mode: Mode = "auto"
    # confirm mode: how long an operator has; an Extreme alert is then sent anyway.
    confirm_timeout_s: float = Field(default=120.0, gt=0)


class CorrelationRule(_Config):
    """Alerts of all ``kinds`` at one site within ``within_s`` become one escalated incident."""

    name: RuleName
    kinds: list[Kind] = Field(min_length=2)
    within_s: float = Field(default=120.0, gt=0)
    same_zone: bool = False
    severity: Severity = "Extreme"
    sites: list[str] | None = None  # None: every site


def checked_request_uri(value: str) -> str:
    """A call's Request-URI and To: the SOS URN or a SIP URI of the PSAP (RFC 8876 §3), with
    nothing CAP's addresses refuse; raises ValueError naming it (its password hidden)."""
    if _SOS_URN.match(value.strip()):
        return value.strip()
    if not value.strip().lower().startswith(("sip:", "sips:")):
        raise ValueError(f"{shown_uri(value)!r} is neither urn:service:sos (RFC 5031) nor a SIP URI of the PSAP")
    return _sip_uri_sent(value, "addresses")


class Ng112Config(_Config):
    psap: str = Field(description="SIP URI of the PSAP or ESRP, e.g. sip:psap@192.0.2.1:5060;transport=tcp")
    request_uri: str = SOS
    sender_domain: str = "s4edge.invalid"
    sender: str | None = None
    location_method: Literal["Manual", "Survey", "GPS", "A-GPS"] = "Manual"
    language: str = "en-US"
    t1_s: float = Field(default=0.5, gt=0, le=60)
    t2_s: float = Field(default=4.0, gt=0, le=600)
    max_attempts: int = Field(default=4, ge=1, le=20)
    backoff_s: float = Field(default=2.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    retry_after_max_s: float = Field(
        default=600.0, ge=0, description="The longest wait a PSAP's Retry-After may set before the next attempt"
    )
    redirect_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts a PSAP's or ESRP's 301/302 may send a call on to (none by default: not followed)",
    )
    # A node updates an incident every 5 s while its readings change (edge/alerts.py): as CAP
    # Updates, 12 MESSAGEs a minute on a call-taker's screen, alike but for a number. 30 s keeps
    # a reading's trend (2 a minute) while cutting that 6-fold; the readings link (CAP
    # <resource>) has every reading for a PSAP that wants them sooner.
    update_interval_s: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="An Update that brings only new readings goes at most once per this many seconds, the "
        "latest at the end of the wait; one that changes what a call-taker sees (severity, event, headline, "
        "area, status) and the end go at once. 0: every update at once",
    )
    workers: int = Field(default=4, ge=1, le=64)
    readings_base_url: str | None = Field(
        default=None, description="Public base URL of the aggregator, for the PSAP data request link"
    )
    # Each CAP message carries a fresh link, so a PSAP holds one while the incident goes on. By
    # default the Alert's outlasts a node's longest incident (edge/alerts.py max_duration_s, an
    # hour) by an hour, and the Cancel's answers two hours after the end; a link that leaked, no
    # longer than this after its message went.
    readings_link_ttl_s: float = Field(
        default=7200.0,
        ge=60,
        le=7 * 86400,
        description="How long the PSAP data request link of a CAP message answers after the message was "
        "composed; past it, 410 Gone. Signed: its holder cannot extend it",
    )
    default: SitePolicy = SitePolicy()
    sites: dict[str, SitePolicy] = Field(default_factory=dict)
    correlation: list[CorrelationRule] = Field(default_factory=list)

    @field_validator("psap")
    @classmethod
    def _sip_uri(cls, value: str) -> str:
        try:
            parse_target(value)
        except SipError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("request_uri")
    @classmethod
    def _request_uri(cls, value: str) -> str:
        return checked_request_uri(value)

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str | None) -> str | None:
        return None if value is None else _sip_uri_sent(value, "sender")

    @field_validator("sender_domain")
    @classmethod
    def _sender_domain(cls, value: str) -> str:
        if not _HOSTNAME.match(value) or len(value) > 253:
            raise ValueError(f"{value!r} is not a host name like s4edge.example.org (RFC 3261 §25.1)")
        return value

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        if not _LANGUAGE.match(value):
            raise ValueError(f"{value!r} is not a language tag like en-US or de-AT (CAP 1.2 <language>, RFC 3066)")
        return value

    @field_validator("readings_base_url")
    @classmethod
    def _readings_base_url(cls, value: str | None) -> str | None:
        """Every CAP message carries ``{value}/ng112/incidents/…/readings?expires=…&sig=…`` (CAP 1.2 §3.2.3 <uri>)."""
        if value is None:
            return None
        shown = shown_uri(value)
        try:
            parts = urlsplit(value.strip())
        except ValueError as exc:
            raise ValueError(f"{shown!r} is not a URL: {exc}") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{shown!r} is not an absolute http(s) URL like https://aggregator.example.org")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{shown!r} holds a user or password, which every CAP message would show the PSAP")
        if parts.query or parts.fragment:
            raise ValueError(f"{shown!r} holds a query or fragment; the readings link adds its own ?expires=…&sig=…")
        return value.strip()

    @property
    def timers(self) -> Timers:
        return Timers(self.t1_s, self.t2_s)

    @property
    def job_kinds(self) -> frozenset[str]:
        """The kinds whose new alerts get a forward job at ingest: any a site's policy forwards
        or a correlation rule combines. Severity is judged when the job is taken, since the
        update of an incident already forwarded goes whatever its severity."""
        kinds = {*self.default.kinds, *(k for p in self.sites.values() for k in p.kinds)}
        return frozenset(kinds | {k for rule in self.correlation for k in rule.kinds})

    def unknown_kinds(self) -> list[str]:
        """Warnings for kinds no s4edge node sends (a plugin's may be meant): ``gass`` forwards nothing."""
        found = []
        named = {"default": self.default, **{f"sites.{site}": policy for site, policy in self.sites.items()}}
        places = {key: policy.kinds for key, policy in named.items()}
        places |= {f"correlation.{rule.name}": rule.kinds for rule in self.correlation}
        for place, kinds in places.items():
            for kind in kinds:
                if kind not in KNOWN_KINDS:
                    close = difflib.get_close_matches(kind, sorted(KNOWN_KINDS), n=1)
                    hint = f" ({close[0]}?)" if close else ""
                    found.append(f"{place}.kinds: {kind} is no kind s4edge nodes send{hint}")
        return found

    def policy_for(self, site: str) -> SitePolicy:
        return self.sites.get(site, self.default)

    def wants(self, alert: Alert) -> tuple[bool, str]:
        """Whether an alert opens a call by itself; updates of a call in progress always go."""
        policy = self.policy_for(alert.site)
        if alert.kind not in policy.kinds:
            return False, f"kind {alert.kind} is not forwarded at site {alert.site}"
        if is_pre_alarm(alert):
            return False, f"{alert.kind} pre-alarm stays local, whatever min_severity (EN 50291-1 alarm times)"
        if SEVERITIES.index(alert.severity) < SEVERITIES.index(policy.min_severity):
            return False, f"severity {alert.severity} is below {policy.min_severity} at site {alert.site}"
        return True, f"{alert.kind}/{alert.severity} is forwarded ({policy.mode})"


def is_pre_alarm(alert: Alert) -> bool:
    """A warning before a standard's alarm point, which no site policy may forward.

    EN 50291-1:2018 (alarm-time table) forbids a CO alarm at 50 ppm before 60 min, and
    UL 2034 one at 70 ppm before 60 min; a node's pre-alarm comes earlier, so a call on it
    would be an alarm the standard forbids. Nodes mark one with a ``pre_alarm`` measurement
    (cloud_sync/messages.py PRE_ALARM); nodes from before that mark sent a CO pre-alarm as
    Moderate, titled "CO pre-alarm", and that title is honoured too."""
    if any(m.quantity == PRE_ALARM and m.value != 0 for m in alert.measurements):
        return True
    return alert.kind == "co" and (alert.title or "").startswith("CO pre-alarm")


_KEYS: Final = sorted({*Ng112Config.model_fields, *SitePolicy.model_fields, *CorrelationRule.model_fields})


def _problem(error: Any) -> str:
    """What is wrong, from pydantic's ``msg`` (never its ``input``: a value may hold a password),
    without its "Value error, "; a misspelled key with the closest one."""
    text = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden" and error["loc"]:
        close = difflib.get_close_matches(str(error["loc"][-1]), _KEYS, n=1)
        text += f" ({close[0]}?)" if close else ""
    return text


class Ng112ConfigError(ValueError):
    pass


def load_config(path: str | Path) -> Ng112Config:
    """Parse a YAML file; errors name the file, the key and what was expected."""
    source = Path(path)
    try:
        raw = load_yaml(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise Ng112ConfigError(f"{source}: cannot read YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise Ng112ConfigError(f"{source}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if not isinstance(raw, dict):
        raise Ng112ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return Ng112Config.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: {'.'.join(str(p) for p in e['loc']) or '(top)'}: {_problem(e)}" for e in exc.errors()]
        raise Ng112ConfigError("\n".join(lines)) from None
