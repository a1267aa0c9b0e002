"""Reading the small files a run trusts (config.json, a model card, an index, the cache's JSON): regular
files only, and only so much of them.

A plain `open()` of a FIFO named `config.json` blocks until some writer comes, which is forever, and
a link to `/dev/zero` is read until memory runs out. So these files are opened without blocking
(`O_NONBLOCK`, which a regular file ignores), checked with `fstat` on the open descriptor (what is
read is what was checked), and read up to a cap. Links are followed unless the caller says
otherwise: a Hugging Face cache snapshot is made of links to its blobs. `--models-from` does not
come here: a FIFO (`--models-from <(...)`) is what it is for.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from .errors import SpecialFileError

MAX_TEXT_BYTES = 64 << 20  # no config, index, model card or scores file comes near this


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words (`a FIFO (named pipe)`)."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def not_regular(path: str, mode: int, fix: str) -> SpecialFileError:
    """The error for `path`, which is a FIFO, a device or a socket where a file was expected."""
    link = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
    return SpecialFileError(path, f"is {kind_of(mode)}{link}, not a regular file; {fix}")


def read_regular(path: str, *, limit: int = MAX_TEXT_BYTES, follow_links: bool = True,
                 fix: str = "replace it with the file itself") -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them.

    Raises:
        SpecialFileError: `path` is a FIFO, a device or a socket (or, without `follow_links`, a
            symbolic link), or holds more than `limit` bytes; the message names it and ends with `fix`.
        OSError: as `open` would (a missing file, a folder, no permission).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow_links and os.path.islink(path):
            raise SpecialFileError(path, f"is a symbolic link, which spectrum never follows here; {fix}") from err
        raise
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(status.st_mode):
            raise not_regular(path, status.st_mode, fix)
        if status.st_size > limit:
            raise _too_large(path, limit, fix)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew while read
                raise _too_large(path, limit, fix)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_regular_text(path: str, **options) -> str:
    """`read_regular`, decoded as UTF-8 (raises UnicodeDecodeError as `open(path, encoding="utf-8")` would)."""
    return read_regular(path, **options).decode("utf-8")


def require_regular(path: str, fix: str = "replace it with the file itself") -> None:
    """Raise SpecialFileError when `path` (links followed) is a FIFO, a device or a socket; a folder,
    a regular file or nothing at all passes (the caller says what is wrong with those)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise not_regular(path, mode, fix)


def _too_large(path: str, limit: int, fix: str) -> SpecialFileError:
    return SpecialFileError(path, f"holds more than {limit >> 20} MB, more than a file of this kind ever does; {fix}")


_SAMPLE_BYTES = 1 << 20  # per window


def sample_digest(path: str, windows: int = 5) -> str:
    """SHA-256 of a file's size and `windows` evenly spaced 1 MiB windows (the first holds the header,
    the last the end): what tells a shard rewritten with new weights of the same shapes from the one
    that was scanned, reading a few MiB instead of the whole file."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode("ascii"))
    last = max(size - _SAMPLE_BYTES, 0)
    offsets = sorted({last * index // max(windows - 1, 1) for index in range(windows)})
    with open(path, "rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()
