"""Errors a person can act on. The UI and the API turn them into messages and status codes."""


class RetrievalError(Exception):
    """Base class: the message is meant for the user, not for a traceback."""

    status_code = 400


class BadInput(RetrievalError, ValueError):
    """The request itself is wrong (corrupt image, empty text, bad parameter)."""

    status_code = 400


class TooLarge(BadInput):
    status_code = 413


class NotFound(RetrievalError, KeyError):
    """An unknown collection, item or file."""

    status_code = 404

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else "not found"


class Conflict(RetrievalError):
    """The request clashes with what exists (a name already taken, a shipped collection)."""

    status_code = 409


class ModelUnavailable(RetrievalError):
    """The model's weights cannot be had here (not cached, and no network)."""

    status_code = 503


class IndexMismatch(RetrievalError):
    """The index was built with another model or preprocessing than the one in use."""

    status_code = 409
