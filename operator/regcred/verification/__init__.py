"""Opt-in credential verification (`spec.verify`): asks each registry whether the
credential is accepted, on threads of its own; its pure parts are `core/verification.py`."""
