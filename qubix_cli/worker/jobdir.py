"""Reading back what a job left in its directory: the one safe reader for outputs (and
whatever else the worker takes from a job's directory), which runs outside the sandbox.

A job controls every byte of its directory, so every name in it may be a trap: a
symbolic link to the provider's `~/.ssh`, a directory swapped for a link between two
looks, a FIFO that never answers, a device. The directory is opened once with
O_DIRECTORY|O_NOFOLLOW and walked through descriptors (`dir_fd=`): each step is one
plain name opened relative to the directory already open, never a path resolved again,
and never through a link. What is not a regular file or a real directory is skipped and
listed with why. Where `os.open` takes no `dir_fd` (Windows), each entry is looked at
without following it and, once opened, checked to be the same file that was looked at.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO, Dict, Iterator, List, Tuple

MAX_DEPTH = 16  # directories below the top
MAX_ENTRIES = 10_000  # names looked at in all
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ = os.O_RDONLY | _NO_FOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NO_FOLLOW
_BY_DESCRIPTOR = os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd
_REPARSE_POINT = getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0x400)

Skipped = List[Dict[str, str]]
Found = Tuple[str, BinaryIO, int]  # relative path ('sub/x.txt'), the open file, its size


class NotADirectory(Exception):
    """The job's directory is not a real directory (the job replaced it with a link, say):
    nothing in it is read."""


def read_files(top: str, skipped: Skipped) -> Iterator[Found]:
    """Each regular file under `top`, by its relative path, open for reading, in name
    order; what is skipped is added to `skipped` with why. A file is closed when the next
    one is asked for. NotADirectory if `top` itself is not a real directory."""
    walk = _Walk(skipped)
    if _BY_DESCRIPTOR:
        try:
            fd = os.open(top, _DIRECTORY)
        except OSError as exc:
            raise NotADirectory(_not_a_directory(exc)) from exc
        try:
            yield from walk.by_descriptor(fd, "", 0)
        finally:
            os.close(fd)
        return
    info = os.lstat(top)
    if not _is_real_directory(info):
        raise NotADirectory("it is a link or not a directory: not followed")
    yield from walk.by_path(top, "", 0)


def _not_a_directory(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return "it is a symbolic link or not a directory: not followed"
    return exc.strerror or str(exc)


def _is_link(info: os.stat_result) -> bool:
    """A symbolic link, or (Windows) a junction or another reparse point."""
    reparse = getattr(info, "st_file_attributes", 0) & _REPARSE_POINT
    return stat.S_ISLNK(info.st_mode) or bool(reparse)


def _is_real_directory(info: os.stat_result) -> bool:
    return stat.S_ISDIR(info.st_mode) and not _is_link(info)


class _Walk:
    def __init__(self, skipped: Skipped) -> None:
        self.skipped, self.seen = skipped, 0

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"name": name, "reason": reason})

    def names(self, listing: list[str], prefix: str) -> list[str]:
        """The names to look at in this directory: the walk stops at MAX_ENTRIES."""
        room = max(0, MAX_ENTRIES - self.seen)
        names = sorted(listing)
        if len(names) > room:
            self.skip(
                prefix or ".", f"more than {MAX_ENTRIES} entries in all: the rest is not read"
            )
        self.seen += min(room, len(names))
        return names[:room]

    def by_descriptor(self, fd: int, prefix: str, depth: int) -> Iterator[Found]:
        for name in self.names(os.listdir(fd), prefix):
            path = prefix + name
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError as exc:
                self.skip(path, exc.strerror or str(exc))
                continue
            if stat.S_ISDIR(info.st_mode):
                yield from self._directory(fd, name, path, depth)
            elif stat.S_ISREG(info.st_mode):
                yield from self._file(fd, name, path)
            else:
                self.skip(path, _kind(info))

    def _directory(self, fd: int, name: str, path: str, depth: int) -> Iterator[Found]:
        if depth >= MAX_DEPTH:
            self.skip(path, f"deeper than {MAX_DEPTH} directories: not read")
            return
        try:
            sub = os.open(name, _DIRECTORY, dir_fd=fd)
        except OSError as exc:  # it became a link since: still not followed
            self.skip(path, _not_a_directory(exc))
            return
        try:
            yield from self.by_descriptor(sub, path + "/", depth + 1)
        finally:
            os.close(sub)

    def _file(self, fd: int, name: str, path: str) -> Iterator[Found]:
        try:
            opened = os.open(name, _READ, dir_fd=fd)
        except OSError as exc:
            link = exc.errno == errno.ELOOP
            self.skip(path, "a symbolic link: not followed" if link else exc.strerror or str(exc))
            return
        info = os.fstat(opened)
        if not stat.S_ISREG(info.st_mode):  # it was replaced between the two looks
            os.close(opened)
            self.skip(path, _kind(info))
            return
        with os.fdopen(opened, "rb") as f:
            yield path, f, info.st_size

    def by_path(self, top: str, prefix: str, depth: int) -> Iterator[Found]:
        """The walk where there are no descriptors for directories: each entry looked at
        without following it, and a file once open checked to be the one looked at."""
        for name in self.names(os.listdir(top), prefix):
            path, full = prefix + name, os.path.join(top, name)
            info = os.lstat(full)
            if _is_real_directory(info):
                if depth >= MAX_DEPTH:
                    self.skip(path, f"deeper than {MAX_DEPTH} directories: not read")
                else:
                    yield from self.by_path(full, path + "/", depth + 1)
            elif stat.S_ISREG(info.st_mode) and not _is_link(info):
                yield from self._same_file(full, path, info)
            else:
                self.skip(path, _kind(info))

    def _same_file(self, full: str, path: str, info: os.stat_result) -> Iterator[Found]:
        try:
            opened = os.open(full, _READ)
        except OSError as exc:
            self.skip(path, exc.strerror or str(exc))
            return
        now = os.fstat(opened)
        same = (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino)
        if not same or not stat.S_ISREG(now.st_mode):
            os.close(opened)
            self.skip(path, "it changed while it was read: not followed")
            return
        with os.fdopen(opened, "rb") as f:
            yield path, f, now.st_size


def _kind(info: os.stat_result) -> str:
    if _is_link(info):
        return "a symbolic link: not followed"
    return "not a regular file (a device, FIFO or socket): not read"
