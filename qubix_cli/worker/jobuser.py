"""Renters' code is never root on the host. A worker that runs as root starts each sandbox
as the unprivileged host user JOB_USER, its groups cleared: a uid changed only inside a
user namespace would still map to host root, with root's reach on every file.

What bwrap binds in must then be reachable by that user; what is not (the worker's venv
or its environments under a 0700 home) is first bound by root, in a private mount
namespace of the sandbox's own, onto a directory that user can reach, and bwrap binds it
from there. Nothing of this reaches the host's own mounts.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import shutil
import stat
import subprocess
import tempfile
from typing import Any

JOB_USER = "qubix-job"  # made by the installer (or here, the first time it is needed)
_BIND_OPTIONS = ("--bind", "--ro-bind", "--dev-bind")  # whose source must be reached
_CLONE_NEWNS, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x00020000, 4096, 16384, 1 << 18


@functools.lru_cache(maxsize=1)
def job_user() -> tuple[int, int] | None:
    """The host uid and gid that jobs run as: None for a worker that is not root (jobs run
    as its own user); JOB_USER's for one that is, made if the installer has not (OSError
    or CalledProcessError if it cannot be)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd  # POSIX only

    try:
        entry = pwd.getpwnam(JOB_USER)
    except KeyError:
        path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
        make = [shutil.which("useradd", path=path) or "useradd", "--system", "--user-group"]
        make += ["--no-create-home"]
        make += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", JOB_USER]
        subprocess.run(make, capture_output=True, check=True)
        entry = pwd.getpwnam(JOB_USER)
    return entry.pw_uid, entry.pw_gid


def give(path: str) -> None:
    """Hand a directory the job writes in (its work dir, a build dir) and all in it to the
    job's user; nothing when jobs run as the worker's own."""
    user = job_user()
    if user is None:
        return
    for top, dirs, files in os.walk(path):
        for name in [top, *(os.path.join(top, n) for n in dirs + files)]:
            os.lchown(name, *user)


class Launch:
    """What the child does before it runs bwrap: bind the staged sources (as root, in a
    mount namespace of its own), then become the job's user."""

    def __init__(self, user: tuple[int, int] | None, mounts: list[tuple[str, str]]) -> None:
        self.user, self.mounts = user, mounts
        self._libc: Any = _libc() if mounts else None

    def __call__(self) -> None:  # in the child, after fork: plain system calls only
        if self.mounts:
            self._call("unshare", _CLONE_NEWNS)
            self._call("mount", None, b"/", None, _MS_REC | _MS_PRIVATE, None)
            for source, place in self.mounts:
                self._call("mount", source.encode(), place.encode(), None, _MS_BIND | _MS_REC, None)
        if self.user is not None:
            os.setgroups([])
            os.setgid(self.user[1])
            os.setuid(self.user[0])

    def _call(self, name: str, *args: Any) -> None:
        if getattr(self._libc, name)(*args) != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"{name}: {os.strerror(number)}")


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def prepare(wrapped: list[str]) -> tuple[list[str], Launch]:
    """bwrap's command line with each bind source the job's user cannot reach replaced by
    the place it is staged at, and the Launch that stages them and drops to that user."""
    user = job_user()
    if user is None:
        return wrapped, Launch(None, [])
    out = list(wrapped)
    mounts: list[tuple[str, str]] = []
    end = out.index("--") if "--" in out else len(out)
    for i in range(end - 1):
        source = out[i + 1] if out[i] in _BIND_OPTIONS else ""
        if os.path.exists(source) and not reachable(source, user[0]):  # bwrap tells of others
            place = _place(len(mounts), os.path.isdir(source))
            mounts.append((source, place))
            out[i + 1] = place
    return out, Launch(user, mounts)


def reachable(path: str, uid: int) -> bool:
    """Whether `uid` (not root) may enter every directory above `path`."""
    parent = os.path.dirname(os.path.realpath(path))
    while True:
        info = os.stat(parent)
        if not info.st_mode & stat.S_IXOTH and not (
            info.st_uid == uid and info.st_mode & stat.S_IXUSR
        ):
            return False
        if parent == os.path.dirname(parent):
            return True
        parent = os.path.dirname(parent)


@functools.lru_cache(maxsize=None)
def _place(n: int, directory: bool) -> str:
    """The n-th place staged sources are bound onto (a directory, or a file for a file):
    in a 0755 directory of this worker's, the same for every sandbox (each binds onto it
    in its own mount namespace)."""
    place = os.path.join(_places(), f"{n}{'' if directory else '.file'}")
    if directory:
        os.mkdir(place, 0o755)
    else:
        os.close(os.open(place, os.O_CREAT | os.O_WRONLY, 0o644))
    return place


@functools.lru_cache(maxsize=1)
def _places() -> str:
    top = tempfile.mkdtemp(prefix="qubix-binds-")
    os.chmod(top, 0o755)
    atexit.register(shutil.rmtree, top, True)
    return top
