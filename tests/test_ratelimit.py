"""Requests-per-minute pacing: one schedule shared by every process, through the real pipeline too."""
import multiprocessing
import time

from pipeline.ratelimit import Pacer

from conftest import SMALL, output_of, run_luigi, write_spec


def _send_times(folder, rpm, n, out):
    pacer = Pacer(folder, {"llm_free": rpm})
    for _ in range(n):
        pacer.wait("llm_free")
        out.put(time.time())


def test_processes_share_one_schedule(tmp_path):
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_send_times, args=(tmp_path, 240, 4, out)) for _ in range(2)]
    for p in procs:
        p.start()
    times = sorted(out.get(timeout=30) for _ in range(8))
    for p in procs:
        p.join(timeout=30)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.25 * 0.9, gaps  # 240/min = one every 0.25 s across both processes


def test_unlimited_pools_do_not_wait(tmp_path):
    pacer = Pacer(tmp_path, {"llm_free": 0})
    started = time.monotonic()
    assert sum(pacer.wait("llm_free") + pacer.wait("llm_paid") for _ in range(50)) == 0
    assert time.monotonic() - started < 0.5


def test_a_cohort_run_respects_the_pool_rate(project, stub):
    write_spec(project, "c1", SMALL)
    run = run_luigi(project, "RunCohort", "--cohort-id", "c1", "--workers", "2", "--llm-rpm-llm-paid", "300",
                    base_url=stub.base_url)
    assert run.returncode == 0, output_of(run)
    arrivals = sorted(r["received"] for r in stub.requests)
    assert len(arrivals) == 6
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    # 300/min = one every 0.2 s. Sends are booked 0.2 s apart, but a process that wakes late
    # shortens the next gap as seen at the server: check the rate over the run, and that no two
    # requests came close together (unpaced, the two workers' requests arrive almost at once).
    assert arrivals[-1] - arrivals[0] >= 5 * 0.2 * 0.95, gaps
    assert min(gaps) >= 0.2 * 0.5, gaps
