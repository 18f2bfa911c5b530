"""Leak checks: secret material must not show in anything regcred writes or prints.

A plain `assert SECRET not in log` would, on failure, print the log, and with it the very
secret it found: these checks name the places that show it and never print their text.
"""

from __future__ import annotations


def assert_not_shown(secret: str, **places: str) -> None:
    """Fail naming each place (keyword: its name, value: its text) whose text holds `secret`."""
    assert secret, "a leak check needs the secret it looks for"
    shown = sorted(name for name, text in places.items() if secret in text)
    assert not shown, f"secret material shown in: {', '.join(shown)}"
