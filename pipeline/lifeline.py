"""Task processes die with the luigi process that started them.

Luigi runs each task in a forked child when --workers > 1 (and RunCohort forks again for its
chunks). If the parent is killed, such a child would go on buying generations on its own, beside
the rerun the user starts. ``install()`` makes every later fork of this process, and of its
children, ask Linux for SIGKILL when its parent dies (PR_SET_PDEATHSIG); ``check_parent()``, run
before each claim, catches what the signal cannot (a parent that died before the child asked,
other systems). Linux sends the signal when the *thread* that forked exits; luigi forks its task
processes from the main thread, which lives as long as the process.

    >>> install()          # once, in the luigi process (pipeline.tasks does it)
    >>> check_parent()     # raises ParentGone in a child whose parent has died
"""
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_forker = []   # pid of the process about to fork (set just before each fork)
_parent = []   # in a forked child: the pid of the process that forked it
_installed = []


class ParentGone(BaseException):
    """The luigi process that started this task process is gone: stop, buy nothing more.

    A BaseException, so that no ``except Exception`` on the way records it as the generation's failure."""


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # libc, already loaded into this process
    except (OSError, AttributeError):
        return None  # not Linux: check_parent() alone


_PRCTL = _prctl()


def _before_fork():
    _forker[:] = [os.getpid()]


def _in_child():
    _parent[:] = _forker[:1]
    die_with_parent(_parent[0] if _parent else None)


def die_with_parent(parent=None) -> None:
    """In a forked child: ask Linux for SIGKILL when the parent dies; end at once if ``parent``, the
    pid of the process that forked this one, is gone already (it died before the request)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def process_start(pid):
    """Start time of process ``pid`` (clock ticks since boot): it tells a live process from a later
    one that reused its pid. "" if no such process is running (a zombie has stopped running);
    None where there is no /proc to ask."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return "" if os.path.isdir("/proc/self") else None
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after its last ")"
    fields = stat.rsplit(")", 1)[1].split()
    return "" if fields[0] in ("Z", "X") else fields[19]


def install():
    if not _installed:
        os.register_at_fork(before=_before_fork, after_in_child=_in_child)
        _installed.append(True)


def adopt_parent():
    """In a process started otherwise than by fork (multiprocessing "spawn"): die with the parent too."""
    _forker[:] = [os.getppid()]
    _in_child()
    install()


def check_parent():
    """Raise ParentGone if this is a forked task process whose parent has died."""
    if _parent and os.getppid() != _parent[0]:
        raise ParentGone(f"pid {os.getpid()}: the luigi process {_parent[0]} that started this task is gone; "
                         f"stopping before the next LLM call")
