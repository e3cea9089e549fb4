"""Requests-per-minute pacing per model pool, shared by every process using the same data/ folder.

Luigi's ``[resources]`` cap how many calls run at once, not how many start per minute; free
OpenRouter models also limit the rate. Set ``[llm] rpm_llm_free = 20`` (0: no limit) and every
worker process, forked or on another machine sharing data/, takes its turn from one schedule.

    >>> pacer = Pacer(Path("data/.ratelimit"), {"llm_free": 20})
    >>> pacer.wait("llm_free")      # sleeps until this process may send; returns the seconds waited
"""
import fcntl
import time
from pathlib import Path


class Pacer:
    def __init__(self, folder, rpm_by_pool):
        self.folder = Path(folder)
        self.interval = {pool: 60.0 / rpm for pool, rpm in rpm_by_pool.items() if rpm and rpm > 0}

    def wait(self, pool) -> float:
        interval = self.interval.get(pool)
        if interval is None:
            return 0.0
        self.folder.mkdir(parents=True, exist_ok=True)
        # the file holds the next free send time; the lock makes "read, book, write" one step
        with open(self.folder / f"{pool}.next", "a+", encoding="ascii") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            try:
                booked = float(fh.read().strip() or 0)
            except ValueError:
                booked = 0.0  # a garbled schedule only costs one unpaced request
            now = time.time()
            slot = max(now, booked)
            fh.seek(0)
            fh.truncate()
            fh.write(repr(slot + interval))
            fh.flush()
        delay = slot - now
        if delay > 0:
            time.sleep(delay)
        return max(delay, 0.0)
