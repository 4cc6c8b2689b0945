"""Spare queue inodes: finished queue files kept for reuse instead of unlinked.

Every message passes through four queue inodes (mess/N, intd/N = todo/N, info/N and
a channel file).  Creating an inode and freeing it again is the dearest thing the
queue does to the filesystem: an inode and a block to allocate, and on freeing, the
block and inode bitmaps to update (a discard on a ``discard`` mount).  On ext4 without
a journal every later create in the same block group also skips each inode freed in
the last minutes, so creating costs more the busier the queue is.  So the programs
that finish with a queue file move it into a spare directory (``queue/spareq`` for
qmailq's mess and intd/todo inodes, ``queue/spares`` for qmail-send's info and channel
files) and the programs that need a new one take a spare from there first.

Rules that keep the queue's guarantees (docs/queue.md §2-§3) exactly as with new files:

- A spare is named by its own inode number and has no other link, so it is not a
  message and no queue file refers to its number; taking it makes that number the
  new message id exactly as a new inode would (the kernel gives no live inode's
  number to another file).
- Taking is ``renameat2(RENAME_NOREPLACE)`` from the spare directory to the name the
  caller would have created with O_EXCL: atomic (of two takers one gets ENOENT and
  tries another spare) and never replacing an existing file (EEXIST, as O_EXCL).
- A taken file is checked (regular, one link, ours), gets mode ``mode``, its atime
  and mtime are set to now if ``touch`` (for pid/ and mess/ files: the 36 h cleanups
  read atime; everything else gets a new mtime from its write), and the caller writes it
  from offset 0 and cuts it to its new length (``trim``) before its fsync; until that
  fsync it is in a state (pid/, S2, S3, or info/local/remote with todo/N present)
  that is never delivered and is cleaned or redone as after any crash.
- Giving is a rename out of the queue's name space, the same transition as the
  unlink it replaces; files above SIZE_MAX are cut to 0 bytes first (their blocks
  go, the inode stays).  When the directory holds MAX spares, the given file is
  still renamed into it and then unlinked by a helper thread of the giving
  process: unlinking frees blocks (with a synchronous discard on a ``discard``
  mount), which would otherwise stall the giver's loop.  Nothing depends on that
  unlink; a spare it misses (the process exits first) stays a spare.
- Anything unexpected (no spare directory, renameat2 missing, EACCES) falls back to
  creating and unlinking, for the life of the process.
"""
from __future__ import annotations

import fcntl
import os
import random
import stat
import threading
from collections import deque
from collections.abc import Callable

MAX = 1024                 # spares kept per directory
SIZE_MAX = 16384           # larger files are cut to 0 bytes before they are kept
SCAN = 64                  # spare names read per directory scan
EMPTY_PAUSE = 64           # takes that create new files after a scan found none
COUNT_EVERY = 64           # gives between two counts of the directory

SPAREQ = "spareq"          # qmailq's spares (mess, intd/todo), relative to queue/
SPARES = "spares"          # qmail-send's spares (info, local, remote)

_renameat2 = None


def _load() -> bool:
    """Look renameat2 up (ctypes, once per process); False where it is missing."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            func = libc.renameat2
            func.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                             ctypes.c_uint)
            func.restype = ctypes.c_int
            _renameat2 = (func, ctypes.get_errno)
        except (ImportError, OSError, AttributeError):
            _renameat2 = False
    return bool(_renameat2)


def prepare() -> None:
    """Load renameat2 now, e.g. in a warm parent before it forks."""
    _load()


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists; OSError as rename(2) gives it."""
    func, get_errno = _renameat2
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) != 0:
        err = get_errno()
        raise OSError(err, os.strerror(err), src, None, dst)


class Pool:
    """One spare directory as a process sees it."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.enabled = True
        self.names: list[str] = []
        self.pause = 0              # takes left before the next scan of an empty directory
        self.count = -1             # spares counted at the last count (-1: not yet)
        self.gives = 0

    def _off(self) -> None:
        self.enabled = False
        self.names = []

    def _scan(self) -> None:
        """Read up to SCAN spare names, in random order (many takers scan at once)."""
        names: list[str] = []
        try:
            with os.scandir(self.dir) as it:
                for entry in it:
                    if entry.name.isdigit():
                        names.append(entry.name)
                        if len(names) >= SCAN:
                            break
        except OSError:
            self._off()
            return
        random.shuffle(names)
        self.names = names
        if not names:
            self.pause = EMPTY_PAUSE

    def _next_name(self) -> str | None:
        """The next spare name to try, or None: the directory had none at the last scan."""
        if not self.names:
            if self.pause:
                self.pause -= 1
                return None
            self._scan()
            if not self.names:
                return None
        return self.names.pop()

    def _fit(self, fd: int, mode: int, touch: bool) -> os.stat_result | None:
        """Make an opened spare fit for use (mode, times); None if it is not a spare to use."""
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid()):
            return None
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        if touch:
            os.utime(fd)
        return st

    def take(self, dest: str, mode: int, touch: bool = False) -> int | None:
        """An fd (O_WRONLY, offset 0) on a spare now named ``dest``, or None: create it.

        FileExistsError if ``dest`` exists, as O_EXCL would raise it.  A taken file
        that is not fit for use (qpy.spare's rules) is unlinked and another tried.
        """
        if not self.enabled or not _load():
            self._off()
            return None
        while (name := self._next_name()) is not None:
            try:
                rename_noreplace(f"{self.dir}/{name}", dest)
            except FileNotFoundError:
                continue            # another process took it (or dest's directory is gone)
            except FileExistsError:
                raise
            except OSError:
                self._off()
                return None
            fd = -1
            try:
                fd = os.open(dest, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                if self._fit(fd, mode, touch) is not None:
                    return fd
            except OSError:
                pass
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(dest)
            except OSError:
                pass
        return None

    def take_named(self, name_for: Callable[[int], str], mode: int,
                   lock: bool = False) -> tuple[int, int] | None:
        """(fd, inode number) of a spare now named ``name_for(inode number)``, or None.

        For mess/<id>: the id is the inode number, which a spare's name already is.
        The spare is opened, checked and touched (atime, mtime now) while still in the
        spare directory, then renamed (never replacing a file).  If another process
        took it meanwhile, the rename finds no file; if it took it and gave it back,
        the name is again this same free inode.  ``lock``: the fd holds an exclusive
        flock, taken before the rename (a spare another taker has locked is skipped).
        """
        if not self.enabled or not _load():
            self._off()
            return None
        while (name := self._next_name()) is not None:
            src = f"{self.dir}/{name}"
            try:
                fd = os.open(src, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError:
                self._off()
                return None
            try:
                if lock:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                st = self._fit(fd, mode, touch=True)
                if st is not None and str(st.st_ino) == name:
                    rename_noreplace(src, name_for(st.st_ino))
                    return fd, st.st_ino
            except OSError:
                pass
            os.close(fd)    # taken meanwhile, or not a spare to use here: left alone
        return None

    def give(self, path: str) -> None:
        """Move the finished queue file ``path`` into the spares, or unlink it.

        Raises OSError as unlink(path) would (FileNotFoundError if it is missing).
        """
        st = os.lstat(path)
        if self.enabled and stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            try:
                if st.st_size > SIZE_MAX:
                    os.truncate(path, 0)
                name = f"{self.dir}/{st.st_ino}"
                full = self._full()
                os.rename(path, name)
                if full:
                    _unlink_soon(os.path.abspath(name))
                else:
                    self.count += 1
                return
            except FileNotFoundError:
                if not os.path.lexists(path):
                    raise
                self._off()
            except OSError:
                self._off()
        os.unlink(path)

    def _full(self) -> bool:
        """True if the directory held MAX spares at the last count (counted every COUNT_EVERY)."""
        self.gives -= 1
        if self.gives <= 0 or self.count < 0:
            self.gives = COUNT_EVERY
            try:
                with os.scandir(self.dir) as it:
                    self.count = sum(1 for _ in it)
            except OSError:
                self._off()
                return True
        return self.count >= MAX


_doomed: deque[str] = deque()
_wake = threading.Condition()
_unlinker_pid = 0


def _unlinker() -> None:
    """Unlink the spares handed to _unlink_soon, for the life of the process."""
    while True:
        with _wake:
            while not _doomed:
                _wake.wait()
            path = _doomed.popleft()
        try:
            os.unlink(path)
        except OSError:
            pass        # taken meanwhile, or gone: either way no longer an excess spare


def _after_fork() -> None:
    """A forked child starts with no unlinker and a fresh lock (the parent's may be held)."""
    global _wake, _unlinker_pid
    _wake = threading.Condition()
    _unlinker_pid = 0
    _doomed.clear()


os.register_at_fork(after_in_child=_after_fork)


def _unlink_soon(path: str) -> None:
    """Have the process's unlinker thread unlink ``path`` (started on first use, per process)."""
    global _unlinker_pid
    with _wake:
        if _unlinker_pid != os.getpid():
            _unlinker_pid = os.getpid()
            _doomed.clear()
            threading.Thread(target=_unlinker, name="spare-unlinker", daemon=True).start()
        _doomed.append(path)
        _wake.notify()


def trim(fd: int, length: int) -> None:
    """Cut a taken spare to the ``length`` bytes just written."""
    os.ftruncate(fd, length)


_pools: dict[str, Pool] = {}


def pool(directory: str) -> Pool:
    """The process's Pool for ``directory`` (one per process, so its scan is shared)."""
    found = _pools.get(directory)
    if found is None:
        found = _pools[directory] = Pool(directory)
    return found
