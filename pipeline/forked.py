"""Work handed to a forked child process and its answer taken back through a pipe.

    >>> job = Job.start(sum, [1, 2, 3])   # returns at once; the child computes sum([1, 2, 3])
    >>> ...                                # this process works meanwhile (the machine's other core)
    >>> job.result()                       # waits: 6, or the child's exception raised here
    6
    >>> job.abort()                        # or: stop the child and reap it

The answer travels as marshal (builtins only: fast for big folds), an exception as pickle. A
child never returns into the caller's code, never runs exit handlers or frees its heap piece by
piece (os._exit: the kernel takes the memory back at once), and dies with the process that
forked it (Linux's PR_SET_PDEATHSIG), so an interrupted parent leaves no child working on.
"""
import marshal
import os
import pickle
import signal

from .errors import PipelineError
from .lifeline import _PRCTL, _PR_SET_PDEATHSIG


class ChildError(PipelineError):
    """The child ended without an answer this process can take."""


class Job:
    def __init__(self, pid, pipe):
        self.pid, self.pipe = pid, pipe

    @classmethod
    def start(cls, fn, *args) -> "Job":
        """Run ``fn(*args)`` in a forked child; its value must be marshal-able."""
        read_end, write_end = os.pipe()
        try:
            pid = os.fork()
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        if pid == 0:   # the child
            code = 1
            try:
                os.close(read_end)
                if _PRCTL is not None:
                    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                try:
                    data = b"v" + marshal.dumps(fn(*args))
                except BaseException as exc:
                    data = b"e" + _pickled(exc)
                with os.fdopen(write_end, "wb") as out:
                    out.write(data)
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        return cls(pid, read_end)

    def result(self):
        """Wait for the child; its value, or its exception raised here. Interrupted (or failing)
        while waiting, this stops the child first."""
        try:
            with os.fdopen(self.pipe, "rb") as pipe:
                self.pipe = None
                data = pipe.read()
            status = self._wait()
        except BaseException:
            self.abort()
            raise
        if data[:1] == b"v":
            return marshal.loads(data[1:])
        if data[:1] == b"e":
            raise pickle.loads(data[1:])
        raise ChildError(f"a forked process (pid {self.pid}) ended with {_status(status)} before it answered; "
                         "was it killed (out of memory)? Run again")

    def abort(self) -> None:
        """Stop the child if it still runs (SIGKILL) and reap it."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait()
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None

    def _wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)   # retried on EINTR (PEP 475)
        self.pid = None
        return status


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
