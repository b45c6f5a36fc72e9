"""One writer per run: the lock file a RunWriter holds while it writes (DESIGN §6).

A writer takes its run by creating ``<run>/ssmlens-writer.lock`` exclusively, before it
writes anything there; the file names the writer (a random token, host, pid, start
time). The token is also written into the run's attributes, and the writer checks that
the lock still names it before every write (each commit) and before it marks the run
complete, so a run is only ever the data of one writer. ``finish()`` and ``abort()``
remove the lock; a writer that dies leaves it behind.

What makes the create exclusive:

- a local path: the lock's content is written to a private temporary file, which is
  then hard-linked to the lock's name; ``link`` fails when the name exists (atomic,
  also on NFS), so the lock never appears empty. Where hard links are not supported,
  ``open(O_CREAT | O_EXCL)`` then a write (a reader may briefly see it empty: "locked,
  holder unknown").
- an fsspec URL: ``fs.open(path, "xb")``, as exclusive as the filesystem makes it:
  atomic for ``file://`` and ``memory://`` (within one process), a conditional put
  where the backend offers one (s3fs on stores with conditional writes). A filesystem
  without an exclusive mode gets a check, a write and a read-back: two writers
  starting within one round trip of each other may then both proceed until the first
  token check of the loser, which stops it.

A lock left by a writer that is gone is *stale*. It is known to be gone when it ran on
this host (same host name) and its pid no longer exists, is a zombie, belongs to a
process started at another time (the pid was reused), or dates from an earlier boot.
``create_run(..., overwrite=True)`` then takes the lock over, warns
(``StaleLockWarning``) and replaces the run; without ``overwrite`` it refuses. A lock of
another host is never taken over: the error names the file to remove once that writer
is known to be gone. One takeover at a time: the taker first creates
``ssmlens-writer.lock.takeover`` exclusively (the same way), so two processes that both
find a stale lock cannot both remove it. Containers that share a filesystem should have
distinct host names (the default), since pids are compared only on the same host.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
import warnings
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

from ssmlens.interp.store.errors import RunExistsError, RunLockedError, StaleLockWarning, StoreError
from ssmlens.interp.store.lockfiles import lock_files

LOCK_NAME = "ssmlens-writer.lock"
TAKEOVER_NAME = LOCK_NAME + ".takeover"


@cache
def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None | bool:
    """(state letter, start time in clock ticks since boot) of ``pid`` from /proc; False
    if /proc exists but has no such process; None without /proc (not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return False if os.path.exists("/proc/self/stat") else None
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()  # after "pid (comm) ": comm may hold spaces
    return fields[0].decode(), int(fields[19])  # stat fields 3 (state) and 22 (starttime)


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run's lock."""

    token: str
    host: str
    pid: int
    started: str
    boot_id: str | None = None
    proc_start: int | None = None  # /proc start time of the pid: tells a reused pid apart

    @classmethod
    def current(cls) -> Holder:
        from ssmlens.interp.store.writer import now

        stat = _proc_stat(os.getpid())
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now(), _boot_id(),
                   stat[1] if isinstance(stat, tuple) else None)

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Holder | None:
        """The holder a lock file names; None if it is empty or unreadable."""
        try:
            d = json.loads(raw)
            return cls(str(d["token"]), str(d["host"]), int(d["pid"]), str(d["started"]),
                       d.get("boot_id"), d.get("proc_start"))
        except Exception:
            return None

    def summary(self) -> dict[str, Any]:
        """What the run's attributes record about its writer."""
        return {"token": self.token, "host": self.host, "pid": self.pid, "started": self.started}

    def describe(self) -> str:
        here = self.host == socket.gethostname() and self.pid == os.getpid()
        return f"pid {self.pid}{' (this process)' if here else ''} on {self.host}, started {self.started}"

    def state(self) -> str:
        """"alive", "gone" (known dead: the lock is stale) or "elsewhere" (another host: unknown)."""
        if self.host != socket.gethostname():
            return "elsewhere"
        if self.boot_id and _boot_id() and self.boot_id != _boot_id():
            return "gone"  # this machine was rebooted since
        if self.pid <= 0:
            return "gone"
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            pass  # a process of another user: it exists
        stat = _proc_stat(self.pid)
        if stat is False:
            return "gone"
        if isinstance(stat, tuple):
            letter, start = stat
            if letter in "ZX":  # dead, not reaped yet
                return "gone"
            if self.proc_start is not None and start != self.proc_start:
                return "gone"  # another process got the pid
        return "alive"


def is_lock_entry(name: str) -> bool:
    """Whether a name in a run's directory is the lock machinery's, not run data."""
    return name in (LOCK_NAME, TAKEOVER_NAME) or (name.startswith(f".{LOCK_NAME}") and name.endswith(".tmp"))


def read_holder(url: str, storage_options: dict | None = None) -> Holder | None:
    """The writer that holds the run at ``url`` now, if any (for messages)."""
    try:
        return Holder.from_bytes(lock_files(url, storage_options).read(LOCK_NAME))
    except Exception:
        return None


def locked_error(url: str, files, holder: Holder | None, state: str) -> RunLockedError:
    """The error for a run that another writer holds."""
    path = files.path(LOCK_NAME)
    if holder is None:
        msg = (f"run {url} is locked: {path} names no writer (it is being created right now, or it is "
               f"damaged); retry, or remove that file if no process is writing the run")
    elif state == "elsewhere":
        msg = (f"run {url} is being written by {holder.describe()} (another host, so this one cannot tell "
               f"whether that writer is still running); if it is gone, remove {path} and retry "
               f"(with overwrite=True to replace its incomplete run)")
    else:
        msg = f"run {url} is being written by {holder.describe()}; one writer per run: wait for it or write elsewhere"
        if holder.pid == os.getpid() and holder.host == socket.gethostname():
            msg += " (an earlier RunWriter of this process: finish() or abort() it first)"
    return RunLockedError(msg, holder=holder, lock_path=path)


class WriterLock:
    """The lock of one RunWriter on its run (see the module docstring)."""

    def __init__(self, url: str, files, holder: Holder, made_root: bool) -> None:
        self.url = url
        self.files = files
        self.holder = holder
        self.made_root = made_root  # the run's directory was made for this writer
        self.path = files.path(LOCK_NAME)

    @classmethod
    def acquire(cls, url: str, storage_options: dict | None = None, *, overwrite: bool = False) -> WriterLock:
        """Take the run at ``url``; RunLockedError if a live (or unknown) writer holds it,
        RunExistsError if a gone writer holds it and ``overwrite`` is False."""
        files = lock_files(url, storage_options)
        made = files.make_root()
        me = Holder.current()
        data = me.to_bytes()
        try:
            for _ in range(5):  # a lock that vanishes between our create and read: try again
                if files.create(LOCK_NAME, data):
                    return cls(url, files, me, made)
                raw = files.read(LOCK_NAME)
                if raw is None:
                    continue  # released meanwhile
                holder = Holder.from_bytes(raw)
                state = holder.state() if holder is not None else "unknown"
                if state != "gone":
                    raise locked_error(url, files, holder, state)
                if not overwrite:
                    raise RunExistsError(
                        f"an incomplete run is at {url}: its writer ({holder.describe()}) is gone without "
                        "finishing it; pass overwrite=True to replace it"
                    )
                if cls._take_over(url, files, holder, me, data):
                    return cls(url, files, me, made)
            raise RunLockedError(f"run {url}: its lock {files.path(LOCK_NAME)} kept changing hands; retry",
                                 lock_path=files.path(LOCK_NAME))
        except BaseException:
            if made:
                files.drop_root()
            raise

    @staticmethod
    def _take_over(url: str, files, stale: Holder, me: Holder, data: bytes) -> bool:
        """Replace ``stale``'s lock by ours, one taker at a time; False if another writer
        got the lock in between (the caller looks again)."""
        if not files.create(TAKEOVER_NAME, data):
            other = Holder.from_bytes(files.read(TAKEOVER_NAME))
            if other is not None and other.state() == "gone":
                raise RunLockedError(
                    f"run {url}: a takeover of its stale lock by {other.describe()} was interrupted; "
                    f"remove {files.path(TAKEOVER_NAME)} and retry", holder=other, lock_path=files.path(TAKEOVER_NAME))
            raise RunLockedError(
                f"run {url} is being taken over by another writer"
                f"{f' ({other.describe()})' if other else ''}; one writer per run", holder=other,
                lock_path=files.path(LOCK_NAME))
        try:
            current = Holder.from_bytes(files.read(LOCK_NAME))
            if current is not None and current.token != stale.token:
                return False  # someone else's lock now
            files.remove(LOCK_NAME)
            if not files.create(LOCK_NAME, data):  # a plain create_run was quicker: its lock now
                return False
            warnings.warn(StaleLockWarning(
                f"run {url}: its writer ({stale.describe()}) is gone; took over its lock to replace the run"
            ), stacklevel=4)
            return True
        finally:
            files.remove(TAKEOVER_NAME)

    # ---- while writing ----------------------------------------------------------------------

    def check(self) -> None:
        """RunLockedError unless the lock still names this writer (called before each commit)."""
        try:
            raw = self.files.read(LOCK_NAME)
        except Exception as e:
            raise StoreError(f"cannot read the lock {self.path} of run {self.url}: {e}", original=e) from None
        if raw == self.holder.to_bytes():  # the usual case: byte for byte what we wrote
            return
        other = Holder.from_bytes(raw)
        if other is not None and other.token == self.holder.token:
            return
        who = f"now held by {other.describe()}" if other else "removed"
        raise RunLockedError(
            f"run {self.url}: this writer's lock {self.path} was {who}, so another writer may own the run; "
            "this writer stopped and wrote nothing more", holder=other, lock_path=self.path,
        )

    def held(self) -> bool:
        try:
            self.check()
            return True
        except StoreError:
            return False

    def release(self) -> None:
        """Remove the lock if it is still ours (never another writer's)."""
        if os.getpid() != self.holder.pid:  # a forked child never releases its parent's lock
            return
        try:
            if self.held():
                self.files.remove(LOCK_NAME)
        except Exception:  # a lock that cannot be removed stays: stale once we exit
            pass

    def abandon(self) -> None:
        """Release the lock of a writer that wrote nothing, and the directory made for it."""
        self.release()
        if self.made_root:
            self.files.drop_root()
