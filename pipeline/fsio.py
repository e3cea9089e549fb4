"""Atomic file writes: a crash leaves the old file or the new one, never half of one.

    >>> write_text_atomic(path, "hello")          # replace
    >>> write_text_once(path, "paid response")    # refuses to replace
"""
import ctypes
import errno
import itertools
import json
import os
import re
import socket
from pathlib import Path

from .errors import StoreError
from .lifeline import process_start

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]
_TMP = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)$")


_SEQ = itertools.count()  # with the pid, names this process's temp files apart (next() is atomic)


def _write_tmp(path, data: bytes, fsync: bool = True, reuse=None) -> str:
    # ``reuse``: a temporary file of this process (swap_in_json's) to write over instead of creating one.
    # the writer's host and pid in the name let remove_stale_tmp() tell leftovers of a killed
    # writer from files being written right now. os.open with mode 0o666 gives the file what the
    # umask allows (0644 usually), as open() would, so a data/ shared by several users stays
    # readable; O_EXCL never reuses a leftover of an earlier process that had this pid.
    # Paths are handled as strings: a pathlib object per write costs more than the rename.
    folder, name = os.path.split(os.fspath(path))
    prefix = f"{folder}/.{name}."
    suffix = f".tmp-{_HOST}-{os.getpid()}"
    tmp, made_folder = None, False
    try:
        if reuse is not None:
            fd = os.open(reuse, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            tmp = reuse
        while tmp is None:
            candidate = f"{prefix}{next(_SEQ)}{suffix}"
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                continue
            except FileNotFoundError:
                if made_folder:
                    raise
                os.makedirs(folder, exist_ok=True)  # only the first write in a folder
                made_folder = True
                continue
            tmp = candidate
        try:
            if callable(data):   # a writer given the file descriptor (a splice copying ranges)
                data(fd)
            else:
                _write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:
        if tmp is not None:
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from None
        raise
    return tmp


def _write_all(fd, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _cannot_write(path, exc) -> StoreError:
    return StoreError(f"{path}: cannot write ({exc.strerror}); free disk space or fix permissions, then rerun")


def new_tmp(path) -> str:
    """An empty temporary file beside ``path`` (to fill and os.replace), named so that
    remove_stale_tmp() deletes it if its writer dies."""
    return _write_tmp(path, b"", fsync=False)


def remove_stale_tmp(folder, names=None) -> int:
    """Delete temporary files left in ``folder`` by writers on this host that are no longer running.
    ``names``: the folder's listing, if the caller has just made one."""
    removed = 0
    if names is None:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return 0
    for name in names:
        m = _TMP.match(name)
        if not m or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _alive(pid):
    if pid == os.getpid():
        return True
    start = process_start(pid)
    if start is not None:
        return bool(start)  # a zombie counts as dead: it writes nothing more
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_bytes_atomic(path, data, fsync: bool = True, reuse=None) -> None:
    """``fsync=False`` for bulk, re-derivable files (metadata seeds): rename stays atomic.
    ``data``: bytes, or a function given the open file descriptor to write them to.
    ``reuse``: a temporary file swap_in_json returned, written over instead of a new one."""
    tmp = _write_tmp(path, data, fsync, reuse)
    try:
        os.replace(tmp, path)
    except OSError as exc:   # e.g. a folder in the way
        os.unlink(tmp)
        raise _cannot_write(path, exc) from None


def write_text_atomic(path, text: str, fsync: bool = True, reuse=None) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), fsync, reuse)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_json_atomic(path, obj, fsync: bool = True) -> None:
    write_bytes_atomic(path, _json_bytes(obj), fsync)


def swap_in_json(path, obj):
    """write_json_atomic without fsync that keeps the file it replaces: swapped (RENAME_EXCHANGE) to a
    temporary name, which is returned for the next write in the folder to reuse (``reuse=``; the
    caller unlinks it if none comes). On ext4 without a journal every deleted inode makes the
    creation of files slower for a minute or more (the allocator steps over recently deleted
    ones), so a generation recycles the inode of the metadata it replaces. None when there was
    no file to replace, or the system cannot swap (a plain replace then)."""
    tmp = _write_tmp(path, _json_bytes(obj), fsync=False)
    if _renameat2_status(tmp, path, _RENAME_EXCHANGE) == 0:
        return tmp
    os.replace(tmp, path)
    return None


def write_text_once(path, text: str, fsync: bool = True, reuse=None) -> bool:
    """Create ``path`` with ``text`` unless it exists. Returns True if this call wrote it.

    Used for paid LLM responses and claims: the temp file is renamed in with RENAME_NOREPLACE (or,
    where the system lacks that, linked in), which fails if the target exists, so two writers
    racing can never overwrite each other. ``reuse``: as for write_bytes_atomic."""
    tmp = _write_tmp(path, text.encode("utf-8"), fsync, reuse)
    moved = _rename_noreplace(tmp, path)
    if moved is not None:
        return moved
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _renameat2():
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # not Linux (or a libc without it)
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return func


_RENAMEAT2 = _renameat2()
_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


def _renameat2_status(old, new, flags) -> int:
    """0 if renameat2 did it, else the errno (ENOSYS where the system has no renameat2)."""
    if _RENAMEAT2 is None:
        return errno.ENOSYS
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags) == 0:
        return 0
    return ctypes.get_errno()


def _rename_noreplace(tmp, path):
    """Move ``tmp`` to ``path`` unless ``path`` exists (True; False and ``tmp`` removed if it does);
    None where the system or file system cannot (``tmp`` is then left for the caller). One call
    instead of link + unlink: a file operation less per paid answer and per claim."""
    err = _renameat2_status(tmp, path, _RENAME_NOREPLACE)
    if err == 0:
        return True
    if err == errno.EEXIST:
        os.unlink(tmp)
        return False
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return None
    os.unlink(tmp)
    raise OSError(err, os.strerror(err), str(path))


def write_if_changed(path, text: str, fsync: bool = True) -> bool:
    """Atomic write that leaves the file (and its mtime) alone when the content is equal."""
    return write_pieces_if_changed(path, (text,), fsync)


def write_pieces_if_changed(path, pieces, fsync: bool = True) -> bool:
    """write_if_changed for text given as an iterable of str pieces, written one by one and never
    joined: a big table's whole text, and its bytes, were each as much fresh memory as the file
    (page faults cost more than the rendering saved). A piece is kept only while the file's
    start equals what came so far; True when the file was written.

        >>> write_pieces_if_changed(path, ("a,b\n", "1,2\n"))
    """
    pieces = iter(pieces)
    kept = []   # the pieces equal to the file's start: written only once one differs
    try:
        with open(path, "rb") as old:
            for piece in pieces:
                kept.append(piece.encode("utf-8"))
                if old.read(len(kept[-1])) != kept[-1]:
                    break
            else:
                if not old.read(1):
                    return False
    except OSError:   # none, unreadable or a folder: the write says which
        pass

    def write(fd):
        for data in kept:
            _write_all(fd, data)
        kept.clear()
        for piece in pieces:
            _write_all(fd, piece.encode("utf-8"))
    write_bytes_atomic(path, write, fsync)
    return True


def read_json(path) -> dict:
    """Read a JSON object, with an error that names the file when it is corrupt."""
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: corrupt JSON ({exc}); restore it or delete it to regenerate") from exc
