"""A failed API call, typed by what it means: callers catch by meaning and never look at a
status code or a reason word; whether trying again soon is worth it belongs to the type."""

from __future__ import annotations

from typing import ClassVar


class KubeError(Exception):
    """A failed API call: `status` is the HTTP code (0: no answer, e.g. the API server is
    unreachable), `reason` the API's reason word (or the connection error's type).

    `api_error` makes the subclass that says what the failure means, so callers catch by
    meaning (`ApiConflict`, `ApiNotFound`...) and never look at the reason word.
    """

    # Worth trying again soon (the work queue's backoff): no answer, a conflict, throttling
    # or a server error. Each subclass says; nothing else keeps a list of statuses for it.
    transient: ClassVar[bool] = False

    def __init__(self, verb: str, what: str, status: int, reason: str) -> None:
        super().__init__(f"{verb} {what}: {status} {reason}")
        self.status = status
        self.reason = reason


class ApiUnavailable(KubeError):
    """No answer, a timeout, throttling or a server error: try again later."""

    transient = True


class ApiConflict(KubeError):
    """409: the object changed since it was read, or exists already."""

    transient = True


class ApiNotFound(KubeError):
    """404 where the object was expected to exist."""


class ApiInvalid(KubeError):
    """422: the API refused the request body; for a guarded JSON Patch, a `test` op failed."""


class ApiRefused(KubeError):
    """Any other refusal (400, 401, 403...): trying again will not help."""


def api_error(verb: str, what: str, status: int, reason: str) -> KubeError:
    """The `KubeError` subclass for an HTTP status: the one place a status is read."""
    kind: type[KubeError]
    if status == 409:
        kind = ApiConflict
    elif status == 404:
        kind = ApiNotFound
    elif status == 422:
        kind = ApiInvalid
    elif status in (0, 408, 429) or status >= 500:
        kind = ApiUnavailable
    else:
        kind = ApiRefused
    return kind(verb, what, status, reason)
