"""Exceptions raised by the adapter registry; each maps to one HTTP status at the edge."""

from __future__ import annotations


class AdapterError(Exception):
    """Base class: every registry failure a caller can act on."""


class AdapterRejected(AdapterError):
    """An uploaded adapter or manifest is unusable (HTTP 400/422); the message names the problem."""


class AdapterNotFound(AdapterError):
    """No adapter or version by that reference (HTTP 404); the message lists what exists."""


class AdapterConflict(AdapterError):
    """The request clashes with the registry's state (HTTP 409), e.g. deleting the promoted
    version or rolling back with no earlier promotion."""
