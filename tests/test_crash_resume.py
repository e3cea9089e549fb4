"""Trust under failure: a real ``luigi`` run killed with SIGKILL, or starved of disk, then resumed.

What a user checks afterwards: the rerun finishes every generation; no answer was bought twice
except the ones in flight when the process died; nothing half-written is left in data/; and the
replayed tables are those of a run that was never interrupted.
"""
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.stub_server import StubLLMServer

from conftest import (SPEC_24, SPEC_24_CALLS, kill_group, make_project, output_of, run_luigi, start_luigi,
                      write_spec)
from trust_checks import (assert_paid_once, assert_same_tables, assert_store_whole, has, prompt_sha_of,
                          recording_stub, result_tables, unsaved_shas, wait_answered, wait_for)

pytestmark = pytest.mark.slow

WORKERS = "2"


def run_cohort(project, srv, prefix=()):
    return run_luigi(project, "RunCohort", "--cohort-id", "c1", "--workers", WORKERS, base_url=srv.base_url,
                     prefix=prefix)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Tables of the same cohort run once, uninterrupted, in a project of its own."""
    project = make_project(tmp_path_factory.mktemp("reference"))
    write_spec(project, "c1", SPEC_24)
    with StubLLMServer() as srv:
        result = run_cohort(project, srv)
    assert result.returncode == 0, output_of(result)
    assert len(project.llm_rows("c1")) == SPEC_24_CALLS
    return result_tables(project)


def all_parsed(project):
    path = project.data_root / "cohorts" / "c1" / "membership.csv"
    return path.exists() and all(has(project, r, "parsed.txt") for r in project.membership("c1"))


def any_raw(project):
    """A raw.txt of any draft (polled tightly: the kill should land before its parsed.txt)."""
    drafts = project.data_root / "gens" / "draft"
    try:
        names = os.listdir(drafts)
    except FileNotFoundError:
        return False
    return any(os.path.exists(os.path.join(drafts, n, "raw.txt")) for n in names)


def kill_during_llm_call(project, srv, admitted):
    def call_in_flight():
        # admitted within the last 0.1 s of a 0.3 s answer: still in flight when the kill lands
        return len(admitted) >= 5 and time.monotonic() - admitted[-1][0] < 0.1 and \
            len(srv.requests) < len(admitted)
    return call_in_flight


KILL_POINTS = {
    "llm_call": kill_during_llm_call,
    "raw_written": lambda project, srv, admitted: lambda: any_raw(project),
    # the tables folder appears when the cohort replays its log, after the last generation
    "replay": lambda project, srv, admitted: lambda: (project.data_root / "tables").exists(),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_rerun_completes_paying_once(project, make_stub, reference, point):
    write_spec(project, "c1", SPEC_24)
    srv, admitted = recording_stub(make_stub, latency=0.3)
    log = project.root / "luigi.out"
    proc = start_luigi(project, "RunCohort", "--cohort-id", "c1", "--workers", WORKERS, base_url=srv.base_url)
    try:
        wait_for(KILL_POINTS[point](project, srv, admitted), 60, f"kill point {point}", proc=proc, log=log,
                 poll=0.001)
    finally:
        kill_group(proc)
    # what the kill left: answers bought but not saved are the only ones the rerun may buy again
    lost = unsaved_shas(project, "c1") & {s for _, s in admitted}
    raw_without_parsed = [r["gen_id"] for r in project.llm_rows("c1")
                          if has(project, r, "raw.txt") and not has(project, r, "parsed.txt")]
    finished = (project.data_root / "cohorts" / "c1" / "run_complete.json").exists()
    assert not finished, "the kill landed after the run finished; nothing was interrupted"
    if point == "llm_call":
        assert lost, "no LLM call was in flight at the kill"
    if point == "replay":
        assert all_parsed(project) and not lost
    assert_store_whole(project, tmp_ok=True)
    wait_answered(srv, admitted)

    rerun = run_cohort(project, srv)
    assert rerun.returncode == 0, output_of(rerun)
    assert all_parsed(project)
    assert_paid_once(project, "c1", srv, extra=lost)
    # a kept raw answer is re-parsed, never bought again
    reused = {e["gen_id"] for e in project.events() if e["type"] == "generation_reused"}
    assert set(raw_without_parsed) <= reused
    assert_same_tables(project, reference)
    assert_store_whole(project)


# --- disk full --------------------------------------------------------------------------------

# Run a command with RLIMIT_FSIZE: a write past ``limit`` bytes in any file fails with EFBIG (as on a full
# disk) instead of killing the process with SIGXFSZ.
_LIMITED = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); os.execv(sys.argv[2], sys.argv[2:])")


# sizes in a run of SPEC_24: a draft's metadata.json ends at ~1160 B, an evaluation's event segment at ~1290 B
@pytest.mark.parametrize("limit", [1100, 1280], ids=["metadata-full", "event-log-full"])
def test_disk_full_fails_clearly_and_next_run_recovers(project, make_stub, reference, limit):
    write_spec(project, "c1", SPEC_24)
    srv, admitted = recording_stub(make_stub)
    # the cohort files fit; the limit bites on the generations' files
    build = run_luigi(project, "BuildCohort", "--cohort-id", "c1", base_url=srv.base_url)
    assert build.returncode == 0, output_of(build)
    full = run_cohort(project, srv, prefix=[sys.executable, "-c", _LIMITED, str(limit)])
    assert full.returncode != 0, output_of(full)
    errors = [line for line in (full.stdout + full.stderr).splitlines() if "File too large" in line]
    assert errors, output_of(full)
    assert not (project.data_root / "cohorts" / "c1" / "run_complete.json").exists()
    assert_store_whole(project)
    lost = unsaved_shas(project, "c1") & {s for _, s in admitted}

    rerun = run_cohort(project, srv)
    assert rerun.returncode == 0, output_of(rerun)
    assert all_parsed(project)
    assert_paid_once(project, "c1", srv, extra=lost)
    assert_store_whole(project)
    assert_same_tables(project, reference)
    # the user must learn which file (so which disk) could not be written
    assert any(str(project.data_root) in line for line in errors), \
        f"the error does not name the file it could not write: {errors[0]}"


def test_repeated_kills_never_pay_twice_for_a_saved_answer(project, make_stub, reference):
    """Kill -9 three times at random-ish moments (every ~1.5 s), then let it finish."""
    write_spec(project, "c1", SPEC_24)
    srv, admitted = recording_stub(make_stub, latency=0.3)
    lost = []
    for round_ in range(3):
        proc = start_luigi(project, "RunCohort", "--cohort-id", "c1", "--workers", WORKERS, base_url=srv.base_url)
        try:
            start = len(admitted)
            wait_for(lambda: len(admitted) >= start + 3, 60, f"requests of round {round_}", proc=proc,
                     log=project.root / "luigi.out")
            time.sleep(0.05 * round_)
        finally:
            kill_group(proc)
        lost += unsaved_shas(project, "c1") & {s for _, s in admitted[start:]}
        wait_answered(srv, admitted)
        assert_store_whole(project, tmp_ok=True)
    rerun = run_cohort(project, srv)
    assert rerun.returncode == 0, output_of(rerun)
    assert_paid_once(project, "c1", srv, extra=lost)
    assert_same_tables(project, reference)
    assert_store_whole(project)


# --- the main luigi process killed alone; runs that overlap ----------------------------------------

def session_alive(sid) -> list:
    """Pids of live (not zombie) processes in session ``sid``: workers left behind by a killed run."""
    alive = []
    for name in os.listdir("/proc"):
        try:
            fields = open(f"/proc/{name}/stat", encoding="ascii").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(name))
    return alive


def test_killing_only_the_main_process_stops_its_workers(project, make_stub, reference):
    """kill -9 of the `luigi` pid alone (not its group), then an immediate rerun: the forked workers
    stop with it, so only the calls in flight at the kill are bought again."""
    write_spec(project, "c1", SPEC_24)
    srv, admitted = recording_stub(make_stub, latency=0.3)
    proc = start_luigi(project, "RunCohort", "--cohort-id", "c1", "--workers", WORKERS, base_url=srv.base_url)
    try:
        wait_for(kill_during_llm_call(project, srv, admitted), 60, "a call in flight", proc=proc,
                 log=project.root / "luigi.out", poll=0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(lambda: not session_alive(proc.pid), 10, "the workers of the killed run to stop")
        lost = unsaved_shas(project, "c1") & {s for _, s in admitted}
        assert lost, "no LLM call was in flight at the kill"
        rerun = run_cohort(project, srv)
    finally:
        kill_group(proc)
    assert rerun.returncode == 0, output_of(rerun)
    # the dead workers' claims were taken over at once, not after their lease
    assert "waiting for" not in rerun.stdout + rerun.stderr, output_of(rerun)
    wait_answered(srv, admitted)
    assert len(admitted) == SPEC_24_CALLS + len(lost)
    assert_paid_once(project, "c1", srv, extra=lost)
    assert_same_tables(project, reference)
    assert_store_whole(project)


def test_overlapping_runs_buy_each_generation_once(project, make_stub, reference):
    """Two RunCohort of one cohort at once, with different command lines (so luigi's own lock does
    not refuse the second): no generation is requested twice, and both exit 0."""
    write_spec(project, "c1", SPEC_24)
    srv, admitted = recording_stub(make_stub, latency=0.2)
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(run_luigi, project, "RunCohort", "--cohort-id", "c1", "--workers", workers,
                            base_url=srv.base_url) for workers in ("2", "3")]
        results = [r.result() for r in runs]
    for result in results:
        assert result.returncode == 0, output_of(result)
    repeated = Counter(s for _, s in admitted) - Counter(prompt_sha_of(project, r) for r in project.llm_rows("c1"))
    assert not repeated, f"requested more than once: {dict(repeated)}"
    assert len(admitted) == SPEC_24_CALLS
    assert_paid_once(project, "c1", srv)
    assert_same_tables(project, reference)
    assert_store_whole(project)


def _unshare_uts_works():
    try:
        return subprocess.run(["unshare", "--uts", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_two_hosts_sharing_data_buy_each_generation_once(project, make_stub, reference):
    """Two "machines" (distinct host names, each in a UTS namespace of its own) run the same cohort on
    one data/ folder: claims from the other host are judged by their lease, so nothing is bought twice."""
    if not _unshare_uts_works():
        pytest.skip("`unshare --uts` is not permitted here (needs CAP_SYS_ADMIN or user namespaces)")
    write_spec(project, "c1", SPEC_24)
    srv, admitted = recording_stub(make_stub, latency=0.2)

    def on_host(name):
        return ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "sh"]

    # --no-lock: luigi's lock file lives in /tmp, which two real machines would not share
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(run_luigi, project, "RunCohort", "--cohort-id", "c1", "--workers", "2", "--no-lock",
                            base_url=srv.base_url, prefix=on_host(name)) for name in ("hosta", "hostb")]
        results = [r.result() for r in runs]
    for result in results:
        assert result.returncode == 0, output_of(result)
    # each host wrote events under its own name: both really ran, as two machines
    hosts = {seg.name.split("-")[0] for seg in project.data_root.glob("events/*/*.jsonl")}
    assert {"hosta", "hostb"} <= hosts, hosts
    assert len(admitted) == SPEC_24_CALLS
    assert_paid_once(project, "c1", srv)
    assert_same_tables(project, reference)
