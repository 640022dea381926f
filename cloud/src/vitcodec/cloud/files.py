"""Reading the server's configuration files (TLS material, credentials) with one-line errors."""

from __future__ import annotations

from pathlib import Path


def read_config_file(path: Path | str, what: str, error: type[Exception]) -> bytes:
    """The file's bytes; a missing, unreadable or folder path raises ``error("<what> <path>: <why>")``, so the
    server refuses to start (or keeps its previous state on reload) with a message naming the file."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{what} {path}: is a folder, not a file") from None
    except PermissionError:
        raise error(f"{what} {path}: cannot read it (permission denied)") from None
    except OSError as exc:
        raise error(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
