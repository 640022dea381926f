"""Reading the server's configuration files (TLS material, credentials) with one-line errors."""

from __future__ import annotations

from pathlib import Path

from vitcodec.file_errors import unreadable_reason


def read_config_file(path: Path | str, what: str, error: type[Exception]) -> bytes:
    """The file's bytes; a missing, unreadable or folder path raises ``error("<what> <path>: <why>")``, so the
    server refuses to start (or keeps its previous state on reload) with a message naming the file."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{what} {path}: {unreadable_reason(exc)}") from None
