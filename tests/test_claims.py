"""Claims without Luigi: real files, real processes racing for one claim."""
import json
import multiprocessing
import os
import time

import pytest

from pipeline import claims
from pipeline.lifeline import process_start


def _race(gen_dir, start_at, lease_s, out):
    while time.time() < start_at:
        pass
    try:
        claims.acquire(gen_dir, lease_s, run_id=f"racer-{os.getpid()}")
        out.put(("won", os.getpid()))
        time.sleep(1.0)  # hold it while the others try
    except claims.ClaimedElsewhere as busy:
        out.put(("busy", busy.owner["pid"]))


def race(gen_dir, n=8, lease_s=60):
    """``n`` processes try to claim ``gen_dir`` at the same instant; [(outcome, pid)] of each."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 0.5
    procs = [ctx.Process(target=_race, args=(gen_dir, start_at, lease_s, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return results


def test_processes_racing_for_a_free_claim_exactly_one_wins(tmp_path):
    gen_dir = tmp_path / "d_x"
    gen_dir.mkdir()
    results = race(gen_dir)
    winners = [pid for outcome, pid in results if outcome == "won"]
    assert len(winners) == 1, results
    # every loser was told who holds it
    assert all(pid == winners[0] for outcome, pid in results if outcome == "busy"), results


def test_processes_racing_for_a_stale_claim_exactly_one_takes_it_over(tmp_path):
    gen_dir = tmp_path / "d_x"
    gen_dir.mkdir()
    stale = claims.acquire(gen_dir, lease_s=0.2)
    time.sleep(0.3)  # its lease ran out (the owner is this live process: only the lease lets others in)
    results = race(gen_dir)
    winners = [pid for outcome, pid in results if outcome == "won"]
    assert len(winners) == 1, results
    names = sorted(p.name for p in gen_dir.iterdir() if p.name.startswith("claim."))
    assert names == [f"claim.{stale.number + 1}.json"], names  # the stale claim is cleaned up


def test_live_claim_is_refused_and_names_its_owner(tmp_path):
    held = claims.acquire(tmp_path, lease_s=60, run_id="run-a")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_race, args=(tmp_path, 0, 60, out))
    p.start()
    outcome, pid = out.get(timeout=30)
    p.join(timeout=30)
    assert (outcome, pid) == ("busy", os.getpid())
    assert claims.holder(tmp_path) is None  # our own claim is not "elsewhere"
    claims.release(held, done=True)
    assert not list(tmp_path.glob("claim.*"))


def _hold_then_die(gen_dir, out):
    claims.acquire(gen_dir, lease_s=3600)
    out.put(os.getpid())
    out.close()
    out.join_thread()
    os._exit(0)  # dies holding it, without releasing


def test_claim_of_a_dead_process_on_this_machine_is_taken_over_at_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_hold_then_die, args=(tmp_path, out))
    p.start()
    dead = out.get(timeout=30)
    p.join(timeout=30)
    [path] = tmp_path.glob("claim.*.json")
    assert json.loads(path.read_text())["pid"] == dead
    assert claims.holder(tmp_path) is None  # lease of an hour, but its process is gone
    claims.acquire(tmp_path, lease_s=60)


def _doc_of(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_reused_pid_does_not_keep_a_claim_alive(tmp_path):
    held = claims.acquire(tmp_path, lease_s=3600)
    doc = _doc_of(held.path)
    # same pid, but a process started at another time: the pid was reused
    held.path.write_text(json.dumps({**doc, "pid_start": "1", "pid": os.getppid()}), encoding="utf-8")
    assert claims.holder(tmp_path) is None


def test_claim_from_another_host_is_judged_by_its_lease_alone(tmp_path):
    held = claims.acquire(tmp_path, lease_s=3600)
    foreign = {**_doc_of(held.path), "host": "elsewhere", "pid": 999999999, "pid_start": "x"}
    held.path.write_text(json.dumps(foreign), encoding="utf-8")
    assert claims.holder(tmp_path)["host"] == "elsewhere"  # its pid does not exist here; the lease runs
    with pytest.raises(claims.ClaimedElsewhere, match="elsewhere pid 999999999"):
        claims.acquire(tmp_path, lease_s=60)
    held.path.write_text(json.dumps({**foreign, "expires_at": time.time() - 1}), encoding="utf-8")
    assert claims.holder(tmp_path) is None
    assert claims.acquire(tmp_path, lease_s=60).number == held.number + 1


def test_held_claim_is_renewed_while_in_use_and_ended_after(tmp_path):
    with claims.held(tmp_path, lease_s=0.3, run_id="r") as claim:
        first = _doc_of(claim.path)["expires_at"]
        time.sleep(0.5)  # longer than the lease: only renewal keeps it
        assert _doc_of(claim.path)["expires_at"] > first
        assert claims.is_live({**_doc_of(claim.path), "pid": os.getppid(),
                               "pid_start": process_start(os.getppid())})
    # not done: the file stays (claim numbers keep growing) with its lease ended
    assert not claims.is_live({**_doc_of(claim.path), "pid": os.getppid()})
    with claims.held(tmp_path, lease_s=60, done=lambda: True) as second:
        assert second.number == claim.number + 1
    assert not list(tmp_path.glob("claim.*"))


def test_unreadable_claim_is_stale(tmp_path):
    (tmp_path / "claim.4.json").write_text("{not json", encoding="utf-8")
    assert claims.acquire(tmp_path, lease_s=60).number == 5
