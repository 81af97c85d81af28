"""The incidents a node has open, kept in a small file beside its outbox (``outbox.db.open-incidents.json``).

The incident book lives in memory. A node that crashes, or loses power, while an incident is
open never sends its end: the aggregator's console showed it open for good, and a PSAP that
took its NG112 call never got the Cancel. The node notes each incident it opens here, and
forgets it when the end is stored; when it starts again, each incident still noted is ended
(``Node.start``), before any source runs.

One JSON object, rewritten whole (a few hundred bytes) through a temporary file and a rename,
so that a power cut leaves either the old file or the new one. It is written when an incident
opens, ends or changes severity, not on every update.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from s4edge.cloud_sync.logfmt import FailureLog
from s4edge.cloud_sync.outbox import is_disk_full
from s4edge.edge.alerts import AlertDraft
from s4edge.files import replace_file


def journal_path(outbox: Path) -> Path:
    """Named after the outbox file: nodes whose outboxes share a folder keep a journal each."""
    return outbox.with_name(f"{outbox.name}.open-incidents.json")


RESTARTED = "ended when the node started again: it stopped (a restart, a crash, a power cut) before it ended this"
_KEPT = ("kind", "severity", "title", "zone", "status")  # what the end repeats
log = logging.getLogger(__name__)


def _entry(draft: AlertDraft) -> dict[str, Any]:
    return {key: getattr(draft, key) for key in _KEPT}


class IncidentJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._open: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._failures = FailureLog(log, f"noting open incidents in {path}", expected=is_disk_full)

    def note(self, draft: AlertDraft) -> None:
        """After ``draft`` was stored: an end forgets its incident, anything else notes it."""
        entry = _entry(draft)
        with self._lock:
            if draft.state == "end":
                if self._open.pop(draft.incident, None) is None:
                    return
            elif self._open.get(draft.incident, {}).get("severity") == draft.severity:
                self._open[draft.incident] = entry  # the latest title and zone, kept for the next write
                return
            else:
                self._open[draft.incident] = entry
            self._write()

    def leftover(self) -> list[AlertDraft]:
        """The ends of the incidents a previous run left open; noted as open again, so that
        each is forgotten only once its end is stored."""
        try:
            found = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:  # a file torn some other way: nothing to end, said once
            log.warning("cannot read %s (%s): incidents open at the last stop stay as they were", self.path, exc)
            return []
        if not isinstance(found, dict):
            return []
        ends = []
        for incident, entry in found.items():
            try:
                ends.append(AlertDraft(state="end", incident=incident, detail=RESTARTED, **entry))
            except TypeError:  # an entry of another shape: not ours to end
                continue
        with self._lock:
            self._open.update((draft.incident, _entry(draft)) for draft in ends)
        return ends

    def _write(self) -> None:
        try:
            replace_file(self.path, json.dumps(self._open))
        except OSError as exc:  # a full disk: the alert itself is stored; at worst an end is not sent after a crash
            self._failures.failed(exc)
        else:
            self._failures.ok()
