"""Open-file cache: hot static files keep their fd, stat and validators (nginx's open_file_cache).

Theory of operation
-------------------
:meth:`FileCache.acquire` maps ``(root, relative path)`` to an :class:`OpenFile`: an fd opened
read-only, its identity (device, inode, size, mtime and ctime in ns) and the precomputed ETag,
Last-Modified and Content-Type. Misses are cached too (``missing``), so probing for absent files
or ``.br``/``.gz`` siblings costs a dict lookup. The cache is an LRU bounded by ``max_entries``.

Freshness, two clocks per entry:

* every ``stat_interval`` seconds (default 1 s, nginx's ``open_file_cache_valid`` idea) the
  identity is compared with an ``lstat`` of the resolved path; any change reopens the file.
  Measured with ``loadtest/staticbench.py`` on a 10 KiB file: a stat on every request was ~7 %
  of the server's CPU per request, so it is once a second by default; ``stat_interval=0``
  re-checks on every use (then a change is seen by the very next request);
* every ``resolve_interval`` seconds (default 1 s) the entry is dropped and the path resolved
  and opened again from scratch, so a directory swapped for a symlink, a permission change or a
  file that appeared after a cached miss are noticed within that time.

Sharing and lifetime: one fd serves concurrent requests safely because ``os.sendfile`` takes an
explicit offset and the read fallback goes through :class:`FileView` (``os.pread`` with its own
position, never the shared file offset). Each user holds a reference (``acquire``/``release``);
an entry that is evicted, replaced or closed by :meth:`FileCache.close` closes its fd only when
the last reference is released, so a download in flight never sees its fd closed or reused.

Path safety (where the TOCTOU reasoning lives). :func:`open_beneath` opens ``root/rel`` without
``O_NOFOLLOW`` (symlinks *inside* the root are allowed), then asks the kernel what it actually
opened: on Linux ``readlink("/proc/self/fd/N")`` is the real path of the open file, checked
for containment in the real root *after* the open. Whatever was swapped in between, the fd we
keep is the file we checked, so there is no window. Without ``/proc`` (macOS, BSD) we fall back
to ``realpath`` + containment + ``open(real, O_NOFOLLOW)``: a symlink swapped into the final
component fails with ELOOP; a swap of an *intermediate* directory between the two calls remains
a window, acceptable only because it needs write access inside the served tree. FIFOs and
devices are opened with ``O_NONBLOCK`` (a FIFO would block ``open`` until a writer appears) and
then refused by ``fstat``: only regular files and directories are served.
"""

from __future__ import annotations

import os
import stat
import time
from collections import OrderedDict
from typing import Any

from server.static import FileInfo, contained, content_type, http_date, make_etag

_PROC_FD = os.path.isdir("/proc/self/fd")
_forks = [0]  # bumped in a forked child: its caches must not trust the parent's entries
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0) | os.O_NOCTTY
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_beneath(root: str, rel: str, *, allow_dotfiles: bool = False) -> tuple[int, str] | None:
    """Open ``root/rel`` read-only if it resolves inside the real path ``root``.

    Returns ``(fd, real_path)`` or None (missing, unreadable, outside the root, or resolving to
    a dotfile when those are refused). See the module docstring for the TOCTOU reasoning.
    """
    path = os.path.join(root, rel) if rel else root
    flags = _OPEN_FLAGS
    if not _PROC_FD:
        path = os.path.realpath(path)
        if not contained(path, root):
            return None
        flags |= _NOFOLLOW
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError):
        return None
    try:
        real = os.readlink(f"/proc/self/fd/{fd}") if _PROC_FD else path
        if not contained(real, root):
            os.close(fd)
            return None
        if not allow_dotfiles and real != root:
            inner = "/" + real[len(root) :].lstrip("/")
            if "/." in inner:
                os.close(fd)
                return None
    except OSError:
        os.close(fd)
        return None
    return fd, real


class FileView:
    """A read-only file object over a shared fd with its own position (``os.pread``).

    What ``exchange.sendfile`` / ``loop.sendfile`` need: ``fileno``, ``mode``, ``seek``,
    ``tell``, ``read``, ``readinto``. Never moves the fd's shared offset.
    """

    __slots__ = ("_fd", "_pos")
    mode = "rb"

    def __init__(self, fd: int, pos: int = 0) -> None:
        self._fd = fd  # borrowed: the owner closes it
        self._pos = pos

    def fileno(self) -> int:
        return self._fd

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self._pos
        elif whence == 2:
            pos += os.fstat(self._fd).st_size
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = max(0, os.fstat(self._fd).st_size - self._pos)
        data = os.pread(self._fd, n, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<FileView fd={self._fd} pos={self._pos}>"


class OpenFile:
    """One cache entry: an open regular file, a directory (no fd) or a cached miss."""

    __slots__ = (
        "checked",
        "ctime_ns",
        "data",
        "dev",
        "fd",
        "info",
        "ino",
        "is_dir",
        "key",
        "mtime_ns",
        "path",
        "plans",
        "refs",
        "resolved",
        "retired",
        "size",
    )

    def __init__(self, key: tuple[str, str], now: float) -> None:
        self.key = key
        self.fd = -1  # >= 0 for a regular file until closed
        self.path = ""  # real path ("" for a miss)
        self.is_dir = False
        # identity checked on revalidation; ctime too: a same-size rewrite that keeps its
        # mtime (cp -p, rsync -t, utime) still changes it, and memory-held bytes must notice
        self.dev = self.ino = self.size = self.mtime_ns = self.ctime_ns = 0
        self.info: FileInfo | None = None  # validators and type (regular files only)
        self.data: bytes | None = None  # whole content of a small file when memory caching
        self.plans: dict[Any, Any] | None = None  # for the file's user (StaticFiles: its plans)
        self.refs = 0  # users currently holding the fd
        self.retired = False  # no longer in the cache: close the fd when refs drops to 0
        self.checked = now  # last identity check (monotonic)
        self.resolved = now  # last full resolve (monotonic)

    @property
    def missing(self) -> bool:
        return not self.path

    def view(self) -> FileView:
        return FileView(self.fd)

    def same(self, st: os.stat_result) -> bool:
        return (
            st.st_ino == self.ino
            and st.st_dev == self.dev
            and st.st_size == self.size
            and st.st_mtime_ns == self.mtime_ns
            and st.st_ctime_ns == self.ctime_ns
        )

    def _close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __repr__(self) -> str:
        kind = "miss" if self.missing else "dir" if self.is_dir else f"fd={self.fd}"
        return (
            f"<OpenFile {self.key[1]!r} {kind} size={self.size} refs={self.refs} "
            f"retired={self.retired}>"
        )


class FileCache:
    """LRU of :class:`OpenFile` (see the module docstring)."""

    def __init__(
        self,
        max_entries: int = 1000,
        *,
        stat_interval: float = 1.0,
        resolve_interval: float = 1.0,
        memory_max: int = 0,
        allow_dotfiles: bool = False,
    ) -> None:
        self.max_entries = max_entries
        self.stat_interval = stat_interval  # seconds between identity checks (0: every use)
        self.resolve_interval = resolve_interval  # seconds between full re-resolutions
        self.memory_max = memory_max  # files up to this size also keep their bytes (0: none)
        self.allow_dotfiles = allow_dotfiles
        self._entries: OrderedDict[tuple[str, str], OpenFile] = OrderedDict()  # LRU order
        self._forks = _forks[0]  # fork generation the entries belong to
        self.hits = self.misses = self.reopens = self.evictions = 0
        self._clock = time.monotonic

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        fds = sum(1 for e in self._entries.values() if e.fd >= 0)
        return (
            f"<FileCache entries={len(self._entries)}/{self.max_entries} fds={fds} "
            f"hits={self.hits} misses={self.misses} reopens={self.reopens} "
            f"evictions={self.evictions}>"
        )

    def acquire(self, root: str, rel: str) -> OpenFile:
        """The entry for ``root/rel`` with a reference held (call :meth:`release` after use,
        also for misses and directories)."""
        if self._forks != _forks[0]:
            self._forks = _forks[0]
            self.close()
        key = (root, rel)
        entries = self._entries
        e = entries.get(key)
        now = self._clock()
        if e is not None:
            if now - e.resolved >= self.resolve_interval:
                self._drop(e)
                e = None
            elif not e.missing and now - e.checked >= self.stat_interval:
                try:
                    st = os.stat(e.path, follow_symlinks=False)
                except OSError:
                    st = None
                if st is None or not e.same(st):
                    self.reopens += 1
                    self._drop(e)
                    e = None
                else:
                    e.checked = now
        if e is None:
            self.misses += 1
            e = self._open(key, now)
            entries[key] = e
            if len(entries) > self.max_entries:
                self._evict()
        else:
            self.hits += 1
            entries.move_to_end(key)
        e.refs += 1
        return e

    def in_memory(self, root: str, rel: str) -> OpenFile | None:
        """The cached entry for ``root/rel`` if its bytes are held in memory (``data``) and
        :meth:`acquire` would return it without a syscall (its checks are recent enough), else
        None (and no hit counted). No reference is taken: only its in-memory fields (``data``,
        ``info``, ``plans``) may be used."""
        e = self._entries.get((root, rel))
        if e is None or e.data is None or self._forks != _forks[0]:
            return None
        now = self._clock()
        if now - e.resolved >= self.resolve_interval or now - e.checked >= self.stat_interval:
            return None
        self.hits += 1
        self._entries.move_to_end(e.key)
        return e

    def release(self, e: OpenFile) -> None:
        e.refs -= 1
        if e.retired and e.refs <= 0:
            e._close()

    def close(self) -> None:
        """Drop every entry; fds close now or when their last user releases them."""
        for e in list(self._entries.values()):
            self._drop(e)

    def _drop(self, e: OpenFile) -> None:
        if self._entries.get(e.key) is e:
            del self._entries[e.key]
        e.retired = True
        if e.refs <= 0:
            e._close()

    def _evict(self) -> None:
        while len(self._entries) > self.max_entries:
            _, e = self._entries.popitem(last=False)
            self.evictions += 1
            e.retired = True
            if e.refs <= 0:
                e._close()

    def _open(self, key: tuple[str, str], now: float) -> OpenFile:
        e = OpenFile(key, now)
        opened = open_beneath(key[0], key[1], allow_dotfiles=self.allow_dotfiles)
        if opened is None:
            return e
        fd, real = opened
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                os.close(fd)
                e.is_dir = True
            elif not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return e
            else:
                e.fd = fd
                e.info = FileInfo(
                    size=st.st_size,
                    mtime=st.st_mtime,
                    etag=make_etag(st),
                    last_modified=http_date(st.st_mtime),
                    content_type=content_type(real),
                )
                if 0 < st.st_size <= self.memory_max:
                    data = os.pread(fd, st.st_size, 0)
                    if len(data) == st.st_size:
                        e.data = data
        except OSError:
            if e.fd >= 0:
                e._close()
            else:
                os.close(fd)
            return OpenFile(key, now)
        e.path = real
        e.dev, e.ino, e.size, e.mtime_ns = st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
        e.ctime_ns = st.st_ctime_ns
        return e
