"""One lock per cache entry, so that processes scanning the same model into the same folder take turns.

The lock is `fcntl.flock` on `snr_results_<slug>.lock` beside the scores file. The kernel drops a
flock when its process dies, however it dies (`kill -9` included), so a lock left by a dead
process never blocks anyone: the next process simply gets it. The holder removes the file before
letting go; a process that was waiting on the removed file notices (its inode is no longer the
one at the path) and tries again on the current file, so two processes never both hold the lock.

The lock file is opened with `O_NOFOLLOW` and must be a regular file: a symbolic link (or a FIFO, a
device) put at its path is an error naming it, and nothing is written through it. The holder's
pid is written only into a lock file this process created, or one that holds nothing but a pid
(left by a killed holder): a file that was put there is never truncated.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from typing import Callable

from ..errors import CacheError
from .entry import LOCK_SUFFIX, CacheEntry  # noqa: F401 (LOCK_SUFFIX re-exported)



def lock_path(scores_file: str) -> str:
    """`model_snr_results/snr_results_<slug>.lock` for `.../snr_results_<slug>.json`."""
    return CacheEntry(scores_file).lock


class EntryLock:
    """An exclusive lock on one cache entry, held from `acquire()` to `release()` (or a `with` block).

    Args:
        path: the lock file (see `lock_path`); its folder is created when missing, and removed
            again on release when this lock created it and it is still empty.
        on_wait: called once, with the holder's process id when it is known, before blocking
            because another process holds the lock.

    `waited` says whether the lock was held by another process when this one asked for it.
    """

    def __init__(self, path: str, *, on_wait: Callable[[int | None], None] | None = None) -> None:
        self.path = path
        self.on_wait = on_wait
        self.waited = False
        self._fd: int | None = None
        self._made_folder: tuple[str, str] | None = None  # (the cache folder, the outermost folder created)

    def acquire(self) -> "EntryLock":
        folder = os.path.dirname(self.path) or "."
        while True:
            if not os.path.isdir(folder):
                missing = folder  # the outermost folder this lock creates, to remove again if left empty
                while os.path.dirname(missing) not in ("", missing) and not os.path.isdir(os.path.dirname(missing)):
                    missing = os.path.dirname(missing)
                try:
                    os.makedirs(folder)
                    self._made_folder = (folder, missing)
                except FileExistsError:
                    pass
                except OSError as err:
                    raise CacheError(folder, f"cannot create the cache folder ({err.strerror}); choose another --cache-dir") from err
            try:
                fd, created = self._open()
            except FileNotFoundError:
                continue  # the folder was removed under us by a process that just finished: make it again
            try:
                self._lock(fd)
                current = os.stat(self.path)
            except FileNotFoundError:
                os.close(fd)
                continue  # the previous holder removed the file as it let go: lock the current one
            except BaseException:
                os.close(fd)
                raise
            mine = os.fstat(fd)
            if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                os.close(fd)
                continue
            self._fd = fd
            break
        try:  # who holds it, for the message of a process that has to wait
            if created or _holds_a_pid_only(fd):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is a courtesy; the flock is the lock
        return self

    def _open(self) -> tuple[int, bool]:
        """(a descriptor of the lock file, whether this call created it); never through a link."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        created = True
        try:
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                created = False
                fd = os.open(self.path, flags)
        except FileNotFoundError:
            raise
        except OSError as err:
            if err.errno == errno.ELOOP or os.path.islink(self.path):
                raise CacheError(self.path, "the lock file is a symbolic link, which spectrum never writes through; "
                                 "delete the link") from err
            raise CacheError(self.path, f"cannot create the lock file ({err.strerror}); choose another --cache-dir") from err
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise CacheError(self.path, f"the lock file is {_kind(mode)}, not a regular file; delete it")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return fd, created

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise CacheError(self.path, f"cannot lock ({err.strerror})") from err
        if not self.waited:
            self.waited = True
            if self.on_wait:
                self.on_wait(_holder(fd))
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the holder lets go or dies

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: see the module docstring
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        if self._made_folder:
            folder, outermost = self._made_folder
            while True:  # only while empty, up to what this lock created: a failed first scan leaves no folder behind
                try:
                    os.rmdir(folder)
                except OSError:
                    break
                if folder == outermost:
                    break
                folder = os.path.dirname(folder)
            self._made_folder = None

    def __enter__(self) -> "EntryLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holds_a_pid_only(fd: int) -> bool:
    """Whether an existing lock file is one a holder left: one link, and nothing in it but a pid."""
    status = os.fstat(fd)
    if status.st_nlink != 1 or status.st_size > 32:
        return False
    return re.fullmatch(rb"\d*\n?", os.pread(fd, 33, 0)) is not None


def _kind(mode: int) -> str:
    from ..files import kind_of

    return kind_of(mode)


def _holder(fd: int) -> int | None:
    """The process id the current holder wrote into the lock file, if any."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
