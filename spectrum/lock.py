"""One lock per cache entry, so that processes scanning the same model into the same folder take turns.

The lock is `fcntl.flock` on `snr_results_<slug>.lock` beside the scores file. The kernel drops a
flock when its process dies, however it dies (`kill -9` included), so a lock left by a dead
process never blocks anyone: the next process simply gets it. The holder removes the file before
letting go; a process that was waiting on the removed file notices (its inode is no longer the
one at the path) and tries again on the current file, so two processes never both hold the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Callable

from .errors import CacheError

LOCK_SUFFIX = ".lock"


def lock_path(scores_file: str) -> str:
    """`model_snr_results/snr_results_<slug>.lock` for `.../snr_results_<slug>.json`."""
    base = scores_file[: -len(".json")] if scores_file.endswith(".json") else scores_file
    return base + LOCK_SUFFIX


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
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                continue  # the folder was removed under us by a process that just finished: make it again
            except OSError as err:
                raise CacheError(self.path, f"cannot create the lock file ({err.strerror}); choose another --cache-dir") from err
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
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is a courtesy; the flock is the lock
        return self

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


def _holder(fd: int) -> int | None:
    """The process id the current holder wrote into the lock file, if any."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
