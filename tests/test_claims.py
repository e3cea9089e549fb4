"""Claims without Luigi: real files, real processes racing for one claim."""
import json
import multiprocessing
import os
import subprocess
import sys
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


def test_claim_of_a_dead_process_on_this_machine_is_taken_over_at_once(tmp_path):
    # a separate interpreter (not a fork): it learns who it is on its own, as a rerun would
    code = "import sys; from pipeline import claims; claims.acquire(sys.argv[1], lease_s=3600)"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [path] = tmp_path.glob("claim.*.json")
    assert json.loads(path.read_text())["pid"] != os.getpid()
    assert claims.holder(tmp_path) is None  # a lease of an hour, but its process is gone
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


def test_claims_held_at_once_are_all_renewed(tmp_path):
    """One renewer thread serves every claim of a process, the long-lease ones too."""
    with claims.held(tmp_path / "a", lease_s=60) as long_one, claims.held(tmp_path / "b", lease_s=0.3) as short:
        first = _doc_of(short.path)["expires_at"]
        with claims.held(tmp_path / "c", lease_s=0.3) as later:  # added while the renewer waits
            later_first = _doc_of(later.path)["expires_at"]
            time.sleep(0.6)
            assert _doc_of(later.path)["expires_at"] > later_first
        assert _doc_of(short.path)["expires_at"] > first
        assert _doc_of(long_one.path)["expires_at"] > time.time() + 50


def test_unreadable_claim_is_stale(tmp_path):
    (tmp_path / "claim.4.json").write_text("{not json", encoding="utf-8")
    assert claims.acquire(tmp_path, lease_s=60).number == 5


# --- with luigi: a generation another machine is buying ----------------------------------------------

def plant_foreign_claim(gen_dir, lease_s):
    """A live claim as another machine would leave it (its pid means nothing here)."""
    doc = {"host": "other-machine", "boot_id": "b", "pid_ns": "n", "pid": 4242, "pid_start": "1",
           "run_id": "their-run", "token": "t", "lease_s": lease_s, "claimed_at": time.time(),
           "expires_at": time.time() + lease_s}
    (gen_dir / "claim.1.json").write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.slow
def test_run_waits_for_a_generation_claimed_elsewhere_then_takes_it_over(project, make_stub):
    """RunCohort does everything else, waits (saying so) while another machine's claim lasts, never
    calls for that generation meanwhile, and takes it over once the lease has run out."""
    from conftest import SMALL, output_of, run_luigi, write_spec

    write_spec(project, "c1", SMALL)
    srv = make_stub()
    build = run_luigi(project, "BuildCohort", "--cohort-id", "c1")
    assert build.returncode == 0, output_of(build)
    draft = project.membership("c1", "draft")[0]["gen_id"]
    lease_s = 6
    plant_foreign_claim(project.gen_dir("draft", draft), lease_s)
    started = time.monotonic()
    result = run_luigi(project, "RunCohort", "--cohort-id", "c1", base_url=srv.base_url)
    assert result.returncode == 0, output_of(result)
    assert time.monotonic() - started >= lease_s - 1, "finished before the other machine's lease ran out"
    log = result.stdout + result.stderr
    assert f"draft {draft} is being generated by other-machine pid 4242 (run their-run" in log, output_of(result)
    assert "waiting for 3 that other processes are buying" in log, output_of(result)  # the draft and its chain
    assert len(srv.requests) == len(project.llm_rows("c1"))  # each bought once, by this run
    assert not list(project.data_root.glob("gens/*/*/claim.*"))


@pytest.mark.slow
def test_single_generation_claimed_elsewhere_fails_naming_the_owner(project, make_stub):
    from conftest import SMALL, output_of, run_luigi, write_spec

    write_spec(project, "c1", SMALL)
    srv = make_stub()
    assert run_luigi(project, "BuildCohort", "--cohort-id", "c1").returncode == 0
    draft = project.membership("c1", "draft")[0]["gen_id"]
    plant_foreign_claim(project.gen_dir("draft", draft), 600)
    result = run_luigi(project, "DraftTask", "--gen-id", draft, base_url=srv.base_url)
    assert result.returncode != 0, output_of(result)
    assert "is being generated by other-machine pid 4242" in result.stdout + result.stderr, output_of(result)
    assert not srv.requests
    assert not (project.gen_dir("draft", draft) / "failed.json").exists()
