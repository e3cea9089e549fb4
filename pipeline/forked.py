"""Work handed to a forked child process, its answer taken back once it is ready.

    >>> job = Job.start(sum, [1, 2, 3])   # returns at once; the child computes sum([1, 2, 3])
    >>> ...                                # this process works meanwhile (the machine's other core)
    >>> job.result()                       # waits: 6, or the child's exception raised here
    6
    >>> job.abort()                        # or: stop the child and reap it

    >>> channel = Channel()                # messages while the child runs, both ways
    >>> job = Job.start(work, channel, channel=channel)    # work() calls channel.send(early_part)
    >>> if channel.ready(): early_part = channel.receive()  # without waiting; receive() waits

The answer travels as marshal (builtins only: fast for big folds), an exception as pickle, through
an in-memory file rather than a pipe: the child writes it all as soon as it is done, whether or not
this process is reading yet. A child never returns into the caller's code, never runs exit
handlers or frees its heap piece by piece (os._exit: the kernel takes the memory back at once), and
dies with the process that forked it (pipeline.lifeline), so an interrupted parent leaves no child
working on.
"""
import ctypes
import marshal
import mmap
import os
import pickle
import select
import signal
import socket
import tempfile

from .errors import PipelineError
from .lifeline import die_with_parent


class ChildError(PipelineError):
    """The child ended without an answer this process can take."""


class Job:
    def __init__(self, pid, answer, ready):
        self.pid, self.answer, self.ready = pid, answer, ready

    @classmethod
    def start(cls, fn, *args, channel=None) -> "Job":
        """Run ``fn(*args)`` in a forked child; its value must be marshal-able. ``channel``: a
        Channel the child and this process then talk through."""
        answer, parent = _memory_file(), os.getpid()
        ready, said = os.pipe()   # a byte once the answer is whole; nothing if the child ends first
        try:
            pid = os.fork()
        except BaseException:
            answer.close()
            os.close(ready)
            os.close(said)
            raise
        if channel is not None:
            channel._keep(pid == 0)
        if pid == 0:   # the child
            code = 1
            try:
                os.close(ready)
                die_with_parent(parent)
                try:
                    kind, data = b"v", marshal.dumps(fn(*args))
                except BaseException as exc:
                    kind, data = b"e", _pickled(exc)
                answer.write(kind)
                answer.write(data)
                answer.flush()
                os.write(said, b"1")
                code = 0
            finally:
                os._exit(code)
        os.close(said)
        return cls(pid, answer, ready)

    def result(self):
        """Wait for the child's answer: its value, or its exception raised here. Interrupted (or
        failing) while waiting, this stops the child first."""
        pid = self.pid
        try:
            kind = value = None
            if os.read(self.ready, 1):
                kind = os.pread(self.answer.fileno(), 1, 0)
                value = _loaded(self.answer.fileno(), marshal.loads if kind == b"v" else pickle.loads, 1)
            self._close()
            status = self._wait()   # after the loads: the child's exit (freeing its memory) overlaps it
        except BaseException:
            self.abort()
            raise
        if kind == b"v":
            return value
        if kind == b"e":
            raise value
        raise ChildError(f"a forked process (pid {pid}) ended with {_status(status)} before it answered; "
                         "was it killed (out of memory)? Run again")

    def abort(self) -> None:
        """Stop the child if it still runs (SIGKILL) and reap it."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait()
        self._close()

    def _close(self) -> None:
        if self.answer is not None:
            self.answer.close()
            os.close(self.ready)
            self.answer = None

    def _wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)   # retried on EINTR (PEP 475)
        self.pid = None
        return status


class Channel:
    """Messages (marshal-able values) between this process and a child Job.start forks, both
    ways. Each is written whole into an in-memory file whose descriptor is passed over a socket,
    so a sender never waits for the reader however big the message."""

    def __init__(self):
        self._ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._end = None

    def _keep(self, child) -> None:
        """After the fork: keep this side's end, close the other's (so a side that ends is seen)."""
        mine, other = self._ends if child else self._ends[::-1]
        other.close()
        self._end = mine

    def send(self, value) -> None:
        with _memory_file() as message:
            message.write(marshal.dumps(value))
            message.flush()
            socket.send_fds(self._end, [b"m"], [message.fileno()])

    def ready(self) -> bool:
        """Whether receive() would return (or fail) at once: a message, or the other side's end, waits."""
        return bool(select.select([self._end], [], [], 0)[0])

    def receive(self):
        """The next message; EOFError when the other side ended (or closed) before sending it."""
        data, fds, _, _ = socket.recv_fds(self._end, 1, 1)
        if not data or not fds:
            raise EOFError("the other process ended before it answered")
        with open(fds[0], "rb") as message:
            return _loaded(message.fileno(), marshal.loads)

    def close(self) -> None:
        for end in self._ends:
            end.close()


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> None:
    """Have this process's allocator (glibc) keep the memory it frees for reuse, big blocks
    included, rather than hand it back to the kernel and take a page fault for each 4 KB it
    touches again (about 3 us each on a virtual machine): for a short-lived worker that makes and
    drops big buffers, like a full replay (29% fewer page faults while reading the 1M log). Only
    both settings together do it: setting either alone turns off glibc's adjusting of the other.
    Does nothing where there is no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)   # glibc's largest: blocks up to 32 MB come from the heap


def _memory_file():
    """An unnamed file in memory (Linux's memfd), else an unnamed temporary file."""
    try:
        return os.fdopen(os.memfd_create("forked-answer", os.MFD_CLOEXEC), "w+b")
    except (AttributeError, OSError):
        return tempfile.TemporaryFile()


def _loaded(fd, loads, start=0):
    """``loads`` of file ``fd``'s bytes from ``start``, read in place: a copy of a big answer costs
    as much as a third of loading it."""
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as data, memoryview(data) as view, view[start:] as body:
        return loads(body)


def _pickled(exc) -> bytes:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)   # an exception whose arguments do not rebuild it fails here, not there
        return data
    except Exception:
        return pickle.dumps(ChildError(f"{type(exc).__name__}: {exc}"))


def _status(status) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
