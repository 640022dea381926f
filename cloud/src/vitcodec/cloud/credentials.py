"""Device credentials: one bearer token per device, of which the server keeps only a salted hash
(``vitcodec-cloud serve --credentials FILE``; written by ``vitcodec-cloud credentials add|revoke|list``).

The file (UTF-8 text; one device per line; ``#`` comments and blank lines are ignored)::

    # vitcodec device credentials: NAME CREATED HASH
    edge-7  2026-01-31T12:00:00Z  scrypt$ln=14,r=8,p=1$<salt>$<digest>

- ``NAME``: the device's name, its client identity: 1 to 64 of ``A-Z a-z 0-9 . _ -``, starting with a letter
  or a digit; unique in the file.
- ``CREATED``: when it was added (ISO 8601, UTC).
- ``HASH``: scrypt (RFC 7914) of the whole token, n = 2**ln, block size r, parallelism p, with a random
  16-byte salt of its own; salt and 32-byte digest in unpadded base64url.

A device's token is ``NAME.SECRET`` (SECRET: 32 random bytes in base64url, 43 characters). The name in front
tells the server which line to check, so verifying a token costs one hash (about 40 ms at ln=14), never one
per device. A verified token is remembered in memory by its SHA-256 (a fast hash: the token is 256 random
bits), so each token is hashed slowly once per server run and every later request costs one dict lookup;
wrong tokens of known devices are remembered too (bounded), so a device retrying with a stale token costs no
slow hash per try. The slow hashes run in worker threads, at most two at a time, off the event loop.

Reload (`CredentialStore.reload`: SIGHUP, or the mtime poll of ``serve``) swaps in a whole new set or none:
a file that does not parse raises `CredentialsError` and the previous set stays. A device whose line is
removed (revoked) is refused from the next request on; the other devices' cached verifications survive the
reload when their lines are unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .files import read_config_file

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
_HASH_PATTERN = re.compile(r"scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)")
HEADER = "# vitcodec device credentials: NAME CREATED HASH (vitcodec-cloud credentials add|revoke|list)\n"

SCRYPT_LN, SCRYPT_R, SCRYPT_P = 14, 8, 1  # 16 MiB and about 40 ms per hash on one core
_SALT_BYTES, _DIGEST_BYTES, _SECRET_BYTES = 16, 32, 32
_MAX_MEM = 128 * 1024 * 1024
_NEGATIVE_CACHE = 4096  # wrong tokens of known devices remembered (then the memory starts again)
_SLOW_HASHES_AT_ONCE = 2

# why a token was refused (the label of vitcodec_auth_failures_total; never a device name)
MISSING, MALFORMED, UNKNOWN, REVOKED, INVALID = "missing", "malformed", "unknown", "revoked", "invalid"
FAILURE_REASONS = (MISSING, MALFORMED, UNKNOWN, REVOKED, INVALID)


class CredentialsError(ValueError):
    """The credentials file cannot be used; one line naming the file (and the line) and what is wrong."""


class DeviceRefused(Exception):
    """A device token that does not authenticate; `reason` is one of `FAILURE_REASONS`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- tokens and hashes -----------------------------------------------------------------------------------------

def valid_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None


def new_token(name: str) -> str:
    """A fresh token for device `name`: ``NAME.SECRET``."""
    return f"{name}.{_b64(secrets.token_bytes(_SECRET_BYTES))}"


def split_token(token: str) -> tuple[str, str] | None:
    """(name, secret) of a device token, None when `token` does not have that form."""
    name, dot, secret = token.rpartition(".")
    if not dot or not valid_name(name) or _SECRET_PATTERN.fullmatch(secret) is None:
        return None
    return name, secret


@dataclass(frozen=True)
class TokenHash:
    """A parsed ``scrypt$ln=..,r=..,p=..$SALT$DIGEST``."""

    ln: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> TokenHash:
        """Raises ValueError (with what is wrong) for anything else."""
        match = _HASH_PATTERN.fullmatch(text)
        if match is None:
            raise ValueError("the hash is not 'scrypt$ln=N,r=N,p=N$SALT$DIGEST'")
        ln, r, p = (int(match.group(i)) for i in (1, 2, 3))
        if not (10 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and 128 * r * (2 ** ln) <= _MAX_MEM // 2):
            raise ValueError(f"scrypt parameters ln={ln}, r={r}, p={p} are out of range (ln 10-20, r 1-32, p 1-16)")
        try:
            salt, digest = _unb64(match.group(4)), _unb64(match.group(5))
        except ValueError:
            raise ValueError("the salt or digest is not base64url") from None
        if len(salt) < 8:
            raise ValueError(f"the salt has {len(salt)} bytes; at least 8")
        if len(digest) != _DIGEST_BYTES:
            raise ValueError(f"the digest has {len(digest)} bytes, not {_DIGEST_BYTES}")
        return cls(ln, r, p, salt, digest)

    def matches(self, token: str) -> bool:
        """The slow check (one scrypt)."""
        computed = hashlib.scrypt(token.encode("utf-8"), salt=self.salt, n=2 ** self.ln, r=self.r, p=self.p,
                                  maxmem=_MAX_MEM, dklen=len(self.digest))
        return hmac.compare_digest(computed, self.digest)


def hash_token(token: str, ln: int = SCRYPT_LN, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The line's HASH field for `token` (a fresh random salt each call)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(token.encode("utf-8"), salt=salt, n=2 ** ln, r=r, p=p, maxmem=_MAX_MEM,
                            dklen=_DIGEST_BYTES)
    return f"scrypt$ln={ln},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def fast_digest(token: str) -> bytes:
    """The in-memory cache key of a presented token (SHA-256: tokens carry 256 random bits)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


# -- the file --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Device:
    """One line of the file."""

    name: str
    created: str
    hash_text: str
    token_hash: TokenHash
    line: int  # 1-based


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _check_time(text: str) -> None:
    value = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if value.tzinfo is None:
        raise ValueError("no time zone")


def parse_credentials(text: str, path: Path | str) -> dict[str, Device]:
    """The devices of a credentials file's text, by name; `CredentialsError` naming the first bad line."""
    devices: dict[str, Device] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"credentials {path} line {number}"
        fields = line.split()
        if len(fields) != 3:
            raise CredentialsError(f"{where}: expected 3 fields 'NAME CREATED HASH', found {len(fields)} "
                                   "(a token must never be written here: the file holds hashes only)")
        name, created, hash_text = fields
        if not valid_name(name):
            raise CredentialsError(f"{where}: device name {name!r} is not 1-64 of A-Z a-z 0-9 . _ - starting "
                                   "with a letter or digit")
        if name in devices:
            raise CredentialsError(f"{where}: device {name!r} is already on line {devices[name].line}")
        try:
            _check_time(created)
        except ValueError:
            raise CredentialsError(f"{where}: creation time {created!r} is not an ISO 8601 UTC time like "
                                   "2026-01-31T12:00:00Z") from None
        try:
            parsed = TokenHash.parse(hash_text)
        except ValueError as exc:
            raise CredentialsError(f"{where}: {exc}") from None
        devices[name] = Device(name, created, hash_text, parsed, number)
    return devices


def _read_text(path: Path) -> str:
    data = read_config_file(path, "credentials", CredentialsError)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise CredentialsError(f"credentials {path} line {line}: not UTF-8 text") from None


def read_credentials(path: Path | str) -> dict[str, Device]:
    path = Path(path)
    return parse_credentials(_read_text(path), path)


# -- editing (the CLI) ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked_folder(path: Path) -> Iterator[None]:
    """An exclusive lock on the file's folder while it is read, changed and replaced (two concurrent
    ``credentials add`` never lose a line)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    """Replace the file's content at once (a reload never sees half a file); the mode of an existing file is
    kept, a new one is 0600."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError:
        raise CredentialsError(f"credentials {path}: cannot write to its folder {path.parent} (permission "
                               "denied)") from None
    except OSError as exc:
        raise CredentialsError(f"credentials {path}: cannot write it ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CredentialsError(f"credentials {path}: cannot write it ({exc.strerror or exc})") from None


def _check_writable(path: Path) -> None:
    if not path.parent.is_dir():
        raise CredentialsError(f"credentials {path}: no such folder {path.parent}")
    if path.exists() and not os.access(path, os.W_OK):
        raise CredentialsError(f"credentials {path}: cannot write it (permission denied)")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CredentialsError(f"credentials {path}: cannot write to its folder {path.parent} (permission "
                               "denied)")


def add_device(path: Path | str, name: str, ln: int = SCRYPT_LN) -> tuple[str, bool]:
    """Add device `name` (creating the file when it does not exist); its new token (which is never stored)
    and whether the file was created. `CredentialsError` for a bad or duplicate name, or a file that cannot
    be read, parsed or written."""
    path = Path(path)
    if not valid_name(name):
        raise CredentialsError(f"device name {name!r} is not 1-64 of A-Z a-z 0-9 . _ - starting with a letter "
                               "or digit")
    _check_writable(path)
    with _locked_folder(path):
        created = not path.exists()
        text = HEADER if created else _read_text(path)
        devices = parse_credentials(text, path)
        if name in devices:
            raise CredentialsError(f"credentials {path}: device {name!r} already exists (line "
                                   f"{devices[name].line}); revoke it first to give it a new token")
        token = new_token(name)
        if text and not text.endswith("\n"):
            text += "\n"
        _write_atomically(path, f"{text}{name} {_utc_now()} {hash_token(token, ln=ln)}\n")
    return token, created


def revoke_device(path: Path | str, name: str) -> None:
    """Remove device `name`'s line; `CredentialsError` when the file or the device does not exist."""
    path = Path(path)
    if not path.exists():
        raise CredentialsError(f"credentials {path}: no such file")
    _check_writable(path)
    with _locked_folder(path):
        text = _read_text(path)
        devices = parse_credentials(text, path)
        if name not in devices:
            known = ", ".join(sorted(devices)) or "none"
            raise CredentialsError(f"credentials {path}: no device named {name!r} (devices: {known})")
        lines = text.splitlines(keepends=True)
        del lines[devices[name].line - 1]
        _write_atomically(path, "".join(lines))


# -- the server's view ------------------------------------------------------------------------------------------

def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns


class _Snapshot:
    """One loaded file: the devices, and the tokens verified (or refused) against exactly these lines."""

    def __init__(self, devices: dict[str, Device]) -> None:
        self.devices = devices
        self.verified: dict[bytes, str] = {}  # SHA-256 of a token -> its device name
        self.refused: dict[bytes, str] = {}  # SHA-256 of a wrong token of a known device -> INVALID


class CredentialStore:
    """The credentials the server checks device tokens against; `reload` swaps in the file's current state.

    `authenticate` runs on the server's event loop (HTTP and gRPC share it)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._signature = _signature(self.path)
        self._snapshot = _Snapshot(read_credentials(self.path))  # CredentialsError: the server does not start
        self._revoked: set[str] = set()  # names removed by a reload while this server ran
        self._failed_signature: tuple[int, int, int, int] | None = None
        self._pending: dict[tuple[bytes, str], asyncio.Future] = {}
        self._slow: asyncio.Semaphore | None = None
        self.reloads = 0

    @property
    def names(self) -> list[str]:
        return sorted(self._snapshot.devices)

    def changed(self) -> bool:
        """Has the file changed since it was last loaded (or last failed to load)?"""
        signature = _signature(self.path)
        return signature != self._signature and signature != self._failed_signature

    def reload(self) -> tuple[list[str], list[str]]:
        """Read the file again and swap it in whole; the names (added, removed). `CredentialsError` keeps the
        previous credentials."""
        signature = _signature(self.path)
        try:
            devices = read_credentials(self.path)
        except CredentialsError:
            self._failed_signature = signature
            raise
        old = self._snapshot
        fresh = _Snapshot(devices)
        for digest, name in old.verified.items():  # unchanged lines keep their verified tokens
            if name in devices and devices[name].hash_text == old.devices[name].hash_text:
                fresh.verified[digest] = name
        # refused tokens are forgotten: a device given a new line may now be right, a removed one is revoked
        removed = sorted(set(old.devices) - set(devices))
        added = sorted(set(devices) - set(old.devices))
        self._revoked = (self._revoked | set(removed)) - set(devices)
        self._snapshot = fresh
        self._signature = signature
        self._failed_signature = None
        self.reloads += 1
        return added, removed

    async def _slow_check(self, device: Device, token: str) -> bool:
        if self._slow is None:
            self._slow = asyncio.Semaphore(_SLOW_HASHES_AT_ONCE)
        async with self._slow:
            return await asyncio.to_thread(device.token_hash.matches, token)

    def _forget(self, key: tuple[bytes, str], done: asyncio.Future) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]
        if not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning when every waiter went away

    async def authenticate(self, token: str) -> str:
        """The device name of `token`, or `DeviceRefused` with the reason."""
        snapshot = self._snapshot
        digest = fast_digest(token)
        name = snapshot.verified.get(digest)
        if name is not None:
            return name
        reason = snapshot.refused.get(digest)
        if reason is not None:
            raise DeviceRefused(reason)
        parts = split_token(token)
        if parts is None:
            raise DeviceRefused(MALFORMED)
        device = snapshot.devices.get(parts[0])
        if device is None:
            raise DeviceRefused(REVOKED if parts[0] in self._revoked else UNKNOWN)
        # one slow check per token however many requests bring it at once; a task of its own, so a request
        # that goes away (cancelled) does not cancel the others' answer
        key = (digest, device.hash_text)  # against this very line (a reload may bring another for the name)
        check = self._pending.get(key)
        if check is None:
            check = asyncio.ensure_future(self._slow_check(device, token))
            self._pending[key] = check
            check.add_done_callback(lambda done: self._forget(key, done))
        ok = await asyncio.shield(check)
        if self._snapshot is not snapshot:  # reloaded meanwhile: decide against the current lines
            current = self._snapshot.devices.get(device.name)
            if current is None or current.hash_text != device.hash_text:
                return await self.authenticate(token)
        else:
            if ok:
                snapshot.verified[digest] = device.name
            else:
                if len(snapshot.refused) >= _NEGATIVE_CACHE:
                    snapshot.refused.clear()
                snapshot.refused[digest] = INVALID
        if not ok:
            raise DeviceRefused(INVALID)
        return device.name
