"""Events published after a write commits: subscriptions, alerts and CDS listen here.

In-process and synchronous for now; a subscriber must be quick and must not
raise (errors are logged and swallowed so one listener cannot break a write).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResourceChanged:
    """A committed create, update or delete of one resource version."""

    res_type: str
    res_id: str
    version: int
    method: str
    body: str | None


Listener = Callable[[ResourceChanged], None]


class EventBus:
    """Fan-out of committed changes to listeners registered by capabilities."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` for every committed change from now on."""
        self._listeners.append(listener)

    def publish(self, events: list[ResourceChanged]) -> None:
        """Deliver committed changes to every listener."""
        for event in events:
            for listener in self._listeners:
                try:
                    listener(event)
                except Exception:  # a listener's failure must never undo or fail a committed write
                    log.exception("event listener failed for %s/%s", event.res_type, event.res_id)
