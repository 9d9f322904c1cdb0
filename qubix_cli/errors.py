"""The exception tree. The CLI catches `QubixError` once and prints its message."""


class QubixError(Exception):
    """Base of every error that Qubix reports to a person."""


class StorageError(QubixError):
    """The data directory cannot be read or written."""


class ValidationError(QubixError):
    """A value given by a person or a client is invalid."""


class ServerError(QubixError):
    """A Qubix server could not be reached or refused a request."""
