"""The active Consents of each patient, kept at hand for the guard (read from the store, briefly cached).

A read checks its patient's consents; reading them from the database on every
read would double its cost, so they are cached per process for a couple of
seconds, and dropped at once when a Consent is written in this process (other
worker processes see a new Consent within ``TTL``). With no Consent on the
server at all, checking costs one cached boolean.
"""

from __future__ import annotations

import threading
import time

import orjson

from salus.events import EventBus, ResourceChanged
from salus.search.engine import run_search
from salus.security.consent import Denial, denials
from salus.store import Store

TTL = 2.0


class ConsentIndex:
    """Per-patient denials from active Consents."""

    def __init__(self, store: Store, events: EventBus) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._any: tuple[float, bool] | None = None
        self._by_patient: dict[str, tuple[float, list[Denial]]] = {}
        events.subscribe(self._changed)

    def _changed(self, event: ResourceChanged) -> None:
        if event.res_type == "Consent":
            with self._lock:
                self._any = None
                self._by_patient.clear()

    def any(self) -> bool:
        """Whether any Consent exists (if none, nothing needs checking)."""
        now = time.monotonic()
        known = self._any  # one read of one attribute: no lock needed to see a whole tuple
        if known is not None and now - known[0] < TTL:
            return known[1]
        found = bool(self.store.query(
            "SELECT 1 FROM resources WHERE res_type = 'Consent' AND NOT deleted LIMIT 1"))
        with self._lock:
            self._any = (now, found)
        return found

    def denials(self, patient: str) -> list[Denial]:
        """The denials in force for ``patient``."""
        now = time.monotonic()
        with self._lock:
            hit = self._by_patient.get(patient)
            if hit is not None and now - hit[0] < TTL:
                return hit[1]
        result = run_search(
            self.store, "Consent", [("patient", f"Patient/{patient}"), ("status", "active"), ("_total", "none")],
            count=1000,
        )
        found = [d for _, _, body in result.entries for d in denials(orjson.loads(body))]
        with self._lock:
            self._by_patient[patient] = (now, found)
        return found
