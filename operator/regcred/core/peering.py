"""Whether a replica is paused under kopf peering, decided from the peering object alone.

kopf pauses a replica while a live peer of higher priority is in the peering object's
status (each peer's entry: priority, lastseen, lifetime; it is live until lastseen +
lifetime). regcred's own watches (regcred/sync/watches.py) follow the same rule, so the
standby keeps its caches current but queues no work. Every replica draws its priority at
random from 2**31 values, so two equal priorities are left out of the rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any


def pausing_deadlines(status: Mapping[str, Any], priority: int, now: datetime) -> list[datetime]:
    """When each live peer of higher priority than `priority` expires; empty: not paused.
    Entries that cannot be read are left out (kopf writes them; another writer's junk must
    not pause us)."""
    deadlines = []
    for entry in status.values():
        if not isinstance(entry, Mapping):
            continue
        try:
            their_priority = int(entry.get("priority", 0))
            lifetime = timedelta(seconds=int(entry.get("lifetime", 60)))
            lastseen = datetime.fromisoformat(str(entry["lastseen"]))
        except (KeyError, TypeError, ValueError):
            continue
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=now.tzinfo)
        deadline = lastseen + lifetime
        if their_priority > priority and deadline > now:
            deadlines.append(deadline)
    return sorted(deadlines)
