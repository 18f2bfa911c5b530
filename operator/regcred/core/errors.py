"""Why a RegistryCredential is not Ready: bad input a user can fix, or a source that could
not be read. Kept apart by type, so no decision is ever taken on a reason string."""

from __future__ import annotations

from dataclasses import dataclass

from regcred.core.conditions import SOURCE_UNREADABLE


class InvalidInput(ValueError):
    """A CR or a source Secret regcred refuses; `reason` becomes the condition reason.

    Messages name fields and keys, never values: they end up in status, events and logs.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class SourceUnreadable:
    """The API failed when the source Secret was read: not the user's input. The CR shows it
    as not Ready, its copies stay as they are, and the read is retried with a backoff."""

    message: str
    reason: str = SOURCE_UNREADABLE


# What keeps a credential from rendering, as its Ready condition reports it.
Problem = InvalidInput | SourceUnreadable
