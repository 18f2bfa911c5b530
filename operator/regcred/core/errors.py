"""The one error type of the pure core: bad input a user can fix."""


class InvalidInput(ValueError):
    """A CR or a source Secret regcred refuses; `reason` becomes the condition reason.

    Messages name fields and keys, never values: they end up in status, events and logs.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
