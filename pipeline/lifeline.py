"""Task processes die with the luigi process that started them.

Luigi runs each task in a forked child when --workers > 1 (and RunCohort forks again for its
chunks). If the parent is killed, such a child would go on buying generations on its own, beside
the rerun the user starts. ``install()`` makes every later fork of this process, and of its
children, ask Linux for SIGKILL when its parent dies (PR_SET_PDEATHSIG); ``check_parent()``, run
before each claim, catches what the signal cannot (a parent that died before the child asked,
other systems).

    >>> install()          # once, in the luigi process (pipeline.tasks does it)
    >>> check_parent()     # raises ParentGone in a child whose parent has died
"""
import ctypes
import ctypes.util
import os
import signal

_PR_SET_PDEATHSIG = 1
_forker = []   # pid of the process about to fork (set just before each fork)
_parent = []   # in a forked child: the pid of the process that forked it


class ParentGone(BaseException):
    """The luigi process that started this task process is gone: stop, buy nothing more.

    A BaseException, so that no ``except Exception`` on the way records it as the generation's failure."""


def _prctl():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: check_parent() alone


_PRCTL = _prctl()


def _before_fork():
    _forker[:] = [os.getpid()]


def _in_child():
    _parent[:] = _forker[:1]
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if _parent and os.getppid() != _parent[0]:
        os._exit(1)  # the parent died before the request above took effect


def install():
    os.register_at_fork(before=_before_fork, after_in_child=_in_child)


def check_parent():
    """Raise ParentGone if this is a forked task process whose parent has died."""
    if _parent and os.getppid() != _parent[0]:
        raise ParentGone(f"pid {os.getpid()}: the luigi process {_parent[0]} that started this task is gone; "
                         f"stopping before the next LLM call")
