"""Qubix: share a GPU with a compute marketplace."""

__version__ = "0.1.0"
