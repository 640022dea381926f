"""Errors of the torch side that the CLI reports as one line; torch-free so importing them costs nothing."""


class DataError(RuntimeError):
    """A dataset cannot be found or read; the message says how to fix it."""
