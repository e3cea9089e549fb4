"""A forked child's answer, its error and its end, as the replay's helpers rely on them."""
import os
import resource
import signal

import pytest

from pipeline.errors import StoreError
from pipeline.forked import ChildError, Job, keep_freed_memory


def no_child_left():
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
    return True


def test_the_childs_value_comes_back_whole():
    big = {f"g{i}": (i, [1.5, None, "x" * 40], {"c"}) for i in range(50_000)}   # far over a pipe's buffer
    job = Job.start(lambda: {key: value for key, value in big.items() if value[0] % 2})
    assert job.result() == {key: value for key, value in big.items() if value[0] % 2}
    assert no_child_left()


def test_the_childs_exception_is_raised_here_as_it_was():
    def fails():
        raise StoreError("tables/llm_calls.csv: cannot write (Is a directory)")

    with pytest.raises(StoreError, match=r"llm_calls.csv: cannot write \(Is a directory\)"):
        Job.start(fails).result()

    class Odd(Exception):   # cannot be rebuilt from its args: its text still arrives
        def __init__(self, a, b):
            super().__init__(f"{a}+{b}")

    def odd():
        raise Odd(1, 2)

    with pytest.raises(ChildError, match=r"Odd: 1\+2"):
        Job.start(odd).result()
    assert no_child_left()


def test_a_killed_child_is_a_clear_error_and_abort_reaps_a_running_one():
    job = Job.start(lambda: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(ChildError, match="ended with signal SIGKILL before it answered"):
        job.result()
    job = Job.start(lambda: signal.pause())
    job.abort()
    assert job.pid is None and no_child_left()


def _faults_of_a_buffer_made_again(keep):
    if keep:
        keep_freed_memory()
    size = 16 << 20
    bytearray(size)   # made and dropped
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    bytearray(size)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_worker_keeping_freed_memory_makes_a_big_buffer_again_without_page_faults():
    pages = (16 << 20) // resource.getpagesize()
    assert Job.start(_faults_of_a_buffer_made_again, False).result() > pages // 2   # glibc's default
    assert Job.start(_faults_of_a_buffer_made_again, True).result() < pages // 20


def test_a_channel_carries_big_messages_both_ways_and_tells_when_the_child_is_gone():
    from pipeline.forked import Channel

    channel = Channel()

    def child(channel):
        channel.send({f"g{i}": "x" * 40 for i in range(50_000)})   # far over a socket's buffer: no wait
        question = channel.receive()
        channel.send(sorted(question))
        return "done"

    job = Job.start(child, channel, channel=channel)
    first = channel.receive()
    assert len(first) == 50_000 and first["g7"] == "x" * 40
    assert not channel.ready()   # the child waits for the question
    channel.send({"b", "a"})
    assert channel.receive() == ["a", "b"]
    assert job.result() == "done"
    assert channel.ready()   # the child's end is closed: receive() would not wait
    with pytest.raises(EOFError):
        channel.receive()
    channel.close()
    assert no_child_left()
