"""Why a file could not be read, in the few words a one-line error gives after the path.

Server configuration files, the edge's images and its TLS files all report a missing, folder or unreadable
path the same way, so a user sees one wording whichever command refused the file.
"""

from __future__ import annotations


def unreadable_reason(exc: OSError) -> str:
    """The reason text for an `OSError` raised while opening or reading one file (never names the path: the
    caller's message starts with it)."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(exc, PermissionError):
        return "cannot read it (permission denied)"
    return f"cannot read it ({exc.strerror or exc})"
