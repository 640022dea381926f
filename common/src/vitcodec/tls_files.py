"""A certificate and its private key into an `ssl.SSLContext`, with one-line errors that name the files.

The server (``--tls-cert``/``--tls-key``) and the edge client (``--client-cert``/``--client-key``) load their
pair the same way. OpenSSL's own messages ("[X509: KEY_VALUES_MISMATCH] key values mismatch") name no file,
and an encrypted key would otherwise prompt for a passphrase on the terminal; here both become one line.
"""

from __future__ import annotations

import os
import ssl

__all__ = ["load_cert_chain"]


class _EncryptedKey(Exception):
    """Raised by the passphrase callback: keys are read unencrypted, never prompted for."""


def _no_password() -> bytes:
    raise _EncryptedKey


def load_cert_chain(context: ssl.SSLContext, cert: str | os.PathLike[str], key: str | os.PathLike[str] | None,
                    *, cert_what: str, key_what: str, error: type[Exception] = ValueError) -> None:
    """`context.load_cert_chain(cert, key)`; any failure raises ``error`` with one line that starts with
    ``cert_what`` or ``key_what`` (e.g. "TLS certificate", "client key") and the path concerned. ``key`` None:
    the key is in the certificate file."""
    with_key = f" with key {key}" if key else ""
    try:
        context.load_cert_chain(cert, key or None, password=_no_password)
    except _EncryptedKey:
        raise error(f"{key_what} {key or cert}: the key is encrypted with a passphrase; give an unencrypted "
                    "key") from None
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in reason:
            raise error(f"{key_what} {key or cert} does not match the {cert_what} {cert}") from None
        raise error(f"{cert_what} {cert}{with_key}: cannot be used ({reason})") from None
    except OSError as exc:  # the file changed or vanished since the caller read it
        raise error(f"{cert_what} {cert}{with_key}: {exc.strerror or exc}") from None
