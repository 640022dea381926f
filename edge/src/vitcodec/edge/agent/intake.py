"""Intake: find finished image (and ``.vcb``) files in the watched folders, encode them in batches into the
outbox, then keep, move or delete the source.

Why polling rather than file events (watchdog/inotify): it needs no extra dependency on the device image, it
works where inotify sees nothing (NFS/SMB shares, FUSE, some container bind mounts), and the scan at start
is needed anyway for files that arrived while the agent was down. A scan of 1,000 files costs a few
milliseconds (docs/edge-agent.md has the measurement), so a poll every half second is cheap.

A file counts as finished when its size and mtime are unchanged across two polls and its mtime is at least
`settle_s` old; names that writers use while writing (``.tmp``, ``.part``, ``~``, dot-files) are skipped, so
the safest producer still writes to a temporary name and renames.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from vitcodec.codec.bitstream import looks_like_stream
from vitcodec.edge.agent.outbox import SourceKey
from vitcodec.edge.images import IMAGE_SUFFIXES, STREAM_SUFFIX, encode_batches

WRITING_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")


class SourcePolicy(str, Enum):
    """What happens to a source file once its stream is safely in the outbox."""

    keep = "keep"
    move = "move"
    delete = "delete"


@dataclass(frozen=True)
class Candidate:
    path: Path
    root: Path  # the watched folder it was found in (for the layout under the done folder)
    key: SourceKey
    ctime_ns: int = 0  # changes with chmod/chown too: a file refused for its permissions is tried again


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes (OSError when it cannot be read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _wanted(name: str) -> bool:
    lower = name.lower()
    if name.startswith(".") or lower.endswith(WRITING_SUFFIXES):
        return False
    return Path(lower).suffix in IMAGE_SUFFIXES or lower.endswith(STREAM_SUFFIX)


def walk(root: Path, exclude: Iterable[Path],
         on_error: Callable[[str, OSError], None] | None = None) -> Iterator[os.DirEntry[str]]:
    """Files under `root` (recursive, no symlinked folders), skipping hidden folders and `exclude`d ones. A
    sub-folder that cannot be listed (permissions) goes to `on_error`; one that vanished meanwhile does not,
    nor does `root` itself (the runner watches the roots)."""
    excluded = {os.path.realpath(p) for p in exclude}
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                for item in it:
                    try:
                        if item.is_dir(follow_symlinks=False):
                            if not item.name.startswith(".") and os.path.realpath(item.path) not in excluded:
                                stack.append(item.path)
                        elif item.is_file() and _wanted(item.name):
                            yield item
                    except OSError:
                        continue
        except OSError as exc:
            if on_error is not None and folder != str(root) and exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                on_error(folder, exc)
            continue


class StabilityTracker:
    """Decides when a file is finished: same (size, mtime) at two polls, and at least `settle_s` old."""

    def __init__(self, settle_s: float = 1.0) -> None:
        self.settle_s = settle_s
        self._last: dict[str, tuple[int, int]] = {}

    def scan(self, roots: list[Path], exclude: list[Path], skip: Callable[[Candidate], bool],
             on_error: Callable[[str, OSError], None] | None = None) -> list[Candidate]:
        """Finished files not `skip`ped, in name order; forgets files that disappeared. Sub-folders that
        cannot be listed go to `on_error` (every scan: the caller says it once)."""
        now_ns = time.time_ns()
        seen: dict[str, tuple[int, int]] = {}
        ready: list[Candidate] = []
        for root in roots:
            for item in walk(root, exclude, on_error):
                try:
                    st = item.stat()
                except OSError:
                    continue
                sig = (st.st_size, st.st_mtime_ns)
                seen[item.path] = sig
                cand = Candidate(Path(item.path), root, SourceKey(item.path, st.st_size, st.st_mtime_ns),
                                 st.st_ctime_ns)
                if skip(cand):
                    continue
                if self._last.get(item.path) == sig and now_ns - st.st_mtime_ns >= self.settle_s * 1e9:
                    ready.append(cand)
        self._last = seen
        ready.sort(key=lambda c: c.key.path)
        return ready


@dataclass
class Encoded:
    candidate: Candidate
    stream: bytes


@dataclass
class Unreadable:
    candidate: Candidate
    message: str
    undecodable: bool = False  # read, but not an image/stream: perhaps still being written (a paused writer)


def encode_batch(encoder, batch: list[Candidate]) -> list[Encoded | Unreadable]:
    """Images through one ONNX Runtime call (`encode_batches`, the batching path of ``encode`` and ``send``,
    so the agent sends the same bytes for the same file); ``.vcb`` files pass through. Never raises for a
    bad file."""
    out: list[Encoded | Unreadable | None] = [None] * len(batch)
    slots = []
    for i, cand in enumerate(batch):
        if cand.path.suffix.lower() != STREAM_SUFFIX:
            slots.append(i)
            continue
        try:
            data = cand.path.read_bytes()
        except OSError as exc:
            out[i] = Unreadable(cand, f"{cand.path}: cannot read ({exc.strerror or exc})")
            continue
        # a damaged stream still goes to the server, whose refusal (400, with its reason) lands in rejected/
        out[i] = Encoded(cand, data) if looks_like_stream(data) else Unreadable(
            cand, f"{cand.path}: not a vitcodec bitstream", undecodable=True)
    if slots:
        for item in encode_batches(encoder, [batch[i].path for i in slots], batch_size=len(slots)):
            cand = batch[slots[item.index]]
            if item.error is None:
                out[slots[item.index]] = Encoded(cand, item.result.stream)
            else:
                message = item.error
                out[slots[item.index]] = Unreadable(
                    cand, message if message.startswith(str(cand.path)) else f"{cand.path}: {message}",
                    undecodable="not a readable image" in message)
    return [o for o in out if o is not None]


def apply_policy(policy: SourcePolicy, cand: Candidate, done_dir: Path | None) -> str | None:
    """Keep, move (to `done_dir`, same layout below it as below the watched folder) or delete a source whose
    stream is durable in the outbox. Returns an error message, or None."""
    if policy is SourcePolicy.keep:
        return None
    try:
        if policy is SourcePolicy.delete:
            cand.path.unlink(missing_ok=True)
            return None
        assert done_dir is not None
        try:
            rel = cand.path.relative_to(cand.root)
        except ValueError:
            rel = Path(cand.path.name)
        target = done_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while target.exists():  # never overwrite an earlier image of the same name
            target = target.with_name(f"{Path(rel.name).stem}.{n}{Path(rel.name).suffix}")
            n += 1
        shutil.move(str(cand.path), str(target))
        return None
    except FileNotFoundError:
        return None  # already gone (moved or deleted before a crash)
    except OSError as exc:
        return f"{cand.path}: cannot {policy.value} the source ({exc.strerror or exc})"
