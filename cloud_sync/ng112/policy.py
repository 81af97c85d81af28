"""Which alerts go to the PSAP, per site, and how (the NG112 config, loadable from YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from s4edge.cloud_sync.messages import PRE_ALARM, SEVERITIES, Alert, Kind, Severity
from s4edge.cloud_sync.ng112.sip import SOS, SipError, parse_target
from s4edge.cloud_sync.ng112.transport import Timers
from s4edge.yaml_text import load_yaml

Mode = Literal["auto", "confirm"]
RuleName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


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
        lines = [f"{source}: {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise Ng112ConfigError("\n".join(lines)) from None
