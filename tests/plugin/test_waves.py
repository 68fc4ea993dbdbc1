"""Waves: several candidates at once, each in its own worktree, on disjoint workers.

A stand-in target whose metric is 1.0 minus the gains its constants name (so two
ideas on different lines combine), which prints the cores and thread count it was
given, and can crash, hang with a child, or take its time while a flag file exists.
Everything goes through the plugin's scripts, on a real git repository, with real
background workers."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from plugin_helpers import (REPO, WAVE_TARGET, edit_target, git, gone_now, hang_children, hook, log_as_told,
                            make_project, ok, records, runs, script, stop_workers, wait)


@pytest.fixture
def project(tmp_path):
    p = make_project(tmp_path / "project")
    (p / "train.py").write_text(WAVE_TARGET)
    git(p, "commit", "-qam", "wave stand-in")
    yield p
    stop_workers(p)


def setup(p, *extra, workers=2):
    ok(script(p, "setup-session", "--tag", "w", "--dataset", "classics", "--budget", "1",
              "--policy", "strict", "--timeout", "6", "--workers", str(workers), *extra))
    ok(script(p, "run-experiment"))
    ok(script(p, "log-experiment", "--status", "keep", "--description", "baseline"))


def candidate(p, description, **constants) -> str:
    out = ok(script(p, "new-candidate", "--description", description)).stdout
    name = re.search(r"^candidate (c\d+): worktree (\S+)", out, re.M).group(1)
    edit_target(p / ".autoresearch" / "worktrees" / name, **constants)
    return name


def test_two_workers_get_one_core_each_and_results_are_logged_as_they_come(project):
    p = project
    setup(p)
    config = records(p)[0]
    assert config["workers"] == 2 and config["backend"] == "local"
    # The baseline ran on the first worker's core, as the candidates will.
    assert "cores [0] threads 1" in (p / "run.log").read_text()
    # A runs long enough for the second worker's process to start and claim B (a
    # worker done with its candidate takes the next queued one itself), and ends
    # well before B.
    a = candidate(p, "idea A", GAIN_A=0.1, SLEEP=1.0)
    b = candidate(p, "idea B", SLEEP=2.5)
    assert (p / ".autoresearch" / "worktrees" / a / "train.py").read_text() != (p / "train.py").read_text()
    assert (p / "train.py").read_text() == WAVE_TARGET, "the project's own tree is untouched"
    out = ok(script(p, "submit-wave")).stdout
    assert "started 2 worker(s): cpu0, cpu1" in out
    first = wait(p)
    assert f"status: ok candidate {a} on cpu" in first and "recommend: keep" in first
    logged = log_as_told(p, first)
    assert "the branch moved to" in logged and f"({a})" in logged
    assert (p / "train.py").read_text().count("GAIN_A = 0.1") == 1, "the kept change is in the project"
    second = wait(p)
    assert f"candidate {b}" in second and "recommend: discard" in second
    log_as_told(p, second)
    logs = {r["candidate"]: r for r in runs(p) if r.get("candidate")}
    assert {logs[a]["worker"], logs[b]["worker"]} == {"cpu0", "cpu1"}
    assert logs[a]["backend"] == "local" and logs[a]["seed"] == 42 and logs[a]["seeds"] == [42]
    cores = {}
    for name in (a, b):
        text = (p / ".autoresearch" / "wave" / f"{name}.log").read_text()
        cores[name] = re.search(r"^cores \[(\d+)\] threads 1 ", text, re.M).group(1)
    assert sorted(cores.values()) == ["0", "1"], "disjoint cores, one thread each"
    assert git(p, "rev-parse", "HEAD") == logs[a]["commit_sha"]
    assert git(p, "rev-parse", f"refs/autoresearch/w/run-{logs[b]['run']}") == logs[b]["commit_sha"]
    assert not (p / ".autoresearch" / "worktrees" / a).exists(), "a logged candidate's worktree goes"
    assert git(p, "status", "--porcelain") == ""
    assert "no candidates in flight" in wait(p)


def test_a_winner_that_lost_to_another_is_rebased_and_the_gains_combine(project):
    p = project
    setup(p)
    a = candidate(p, "idea A", GAIN_A=0.1)
    b = candidate(p, "idea B", GAIN_B=0.05, SLEEP=1.0)
    ok(script(p, "submit-wave"))
    log_as_told(p, wait(p))                             # A kept
    out = wait(p)
    assert f"candidate {b}" in out and "recommend: rebase" in out, out
    logged = log_as_told(p, out)
    assert "as candidate c3 (queued)" in logged and f"re-based {b}" in logged, logged
    third = wait(p)
    assert "candidate c3" in third and f"(re-based from {b})" in third and "recommend: keep" in third
    log_as_told(p, third)
    rec = runs(p)[-1]
    assert rec["candidate"] == "c3" and rec["rebased_from"] == b and rec["status"] == "keep"
    assert rec["metric"] == pytest.approx(0.85)
    text = (p / "train.py").read_text()
    assert "GAIN_A = 0.1" in text and "GAIN_B = 0.05" in text
    assert git(p, "rev-list", "--count", "HEAD") == "4", "baseline, stand-in, A, then B re-based on A"


def test_a_later_candidate_that_beats_the_new_kept_state_replaces_it(project):
    p = project
    setup(p)
    small = candidate(p, "small gain", GAIN_A=0.02)
    big = candidate(p, "big gain", GAIN_B=0.2, SLEEP=1.0)
    ok(script(p, "submit-wave"))
    log_as_told(p, wait(p))
    out = wait(p)
    assert f"candidate {big}" in out and "recommend: keep" in out and "replaces" in out, out
    logged = log_as_told(p, out)
    assert f"it replaces the kept {small}" in logged and f"re-based {small}" in logged, logged
    big_rec = runs(p)[-1]
    assert git(p, "rev-parse", "HEAD") == big_rec["commit_sha"]
    last = wait(p)
    assert f"(re-based from {small})" in last and "recommend: keep" in last
    log_as_told(p, last)
    assert runs(p)[-1]["metric"] == pytest.approx(0.78)
    # finalize --split: the replacing change stands on its own (its parent is its base,
    # not the change it replaced), so it gets its own branch.
    ok(script(p, "end-session"))
    plan = ok(script(p, "finalize", "--split")).stdout
    assert f"autoresearch/w-run{big_rec['run']}: big gain" in plan, plan
    assert "needs an earlier change" not in plan, plan


def test_crash_nan_hang_and_tampering_in_one_wave_the_hang_killed_with_its_group(project):
    p = project
    setup(p)
    crash = candidate(p, "broken attention", MODE="crash")
    hang = candidate(p, "loader rewrite", MODE="hang")
    nan = candidate(p, "softcap typo", MODE="nan")
    ok(script(p, "submit-wave"))
    started = time.time()
    outs = [wait(p), wait(p), wait(p)]
    by = {n: next(o for o in outs if f"candidate {n} " in o) for n in (crash, hang, nan)}
    assert "status: crash" in by[crash] and "shape mismatch in attention" in by[crash]
    assert "status: nan" in by[nan] and "loss is NaN" in by[nan]
    assert re.search(r"^status: timeout .*\(limit 6s, process group killed\)", by[hang], re.M), by[hang]
    assert time.time() - started < 40
    tree = p / ".autoresearch" / "worktrees" / hang
    assert (tree / "data" / "hang_child.pid").exists(), "the hung run started its child"
    time.sleep(0.3)
    assert hang_children(tree) == [], "the hung run's child was killed with its group"
    for o in outs:
        assert "--status crash" in o
        log_as_told(p, o)
    statuses = {r["candidate"]: r["run_status"] for r in runs(p) if r.get("candidate")}
    assert statuses == {crash: "crash", hang: "timeout", nan: "nan"}
    assert all(r["status"] == "crash" for r in runs(p)[1:])
    assert (p / "train.py").read_text() == WAVE_TARGET
    # A candidate that edits its worktree's harness is not submitted; one whose run
    # changes it is tampered, and never logged.
    sneaky = candidate(p, "smaller eval", GAIN_A=0.3)
    wt = p / ".autoresearch" / "worktrees" / sneaky
    with open(wt / "prepare.py", "a") as f:
        f.write("EVAL_TOKENS = 1024\n")
    r = script(p, "submit-wave")
    assert r.returncode == 2 and "changed prepare.py, outside the session's files" in r.stderr
    git(wt, "checkout", "--", "prepare.py")
    edit_target(wt, MODE="tamper")
    harness_before = (wt / "prepare.py").read_text()
    ok(script(p, "submit-wave"))
    out = wait(p)
    assert f"status: crash candidate {sneaky}" in out and "Read-only file system" in out, out
    assert (wt / "prepare.py").read_text() == harness_before      # its worktree is read-only too
    log_as_told(p, out)
    assert runs(p)[-1]["run_status"] == "crash"
    assert not (p / ".autoresearch" / "worktrees" / sneaky).exists()


def test_a_kill_mid_wave_then_resume_lists_finished_and_lost_and_requeues(project):
    p = project
    setup(p)
    quick = candidate(p, "quick idea", GAIN_A=0.1)
    slow = candidate(p, "slow idea", GAIN_B=0.1)
    (p / ".autoresearch" / "worktrees" / slow / "slow.flag").write_text("")
    ok(script(p, "submit-wave"))
    deadline = time.time() + 30
    while time.time() < deadline:
        states = {c["name"]: c["state"] for c in
                  (json.loads(f.read_text()) for f in (p / ".autoresearch" / "wave").glob("c*.json"))}
        if states.get(quick) == "done" and states.get(slow) == "running":
            break
        time.sleep(0.2)
    assert states == {quick: "done", slow: "running"}, states
    run = json.loads((p / ".autoresearch" / "wave" / f"{slow}.running").read_text())["pgid"]
    # The machine's worst case: the worker is killed outright, its run left behind.
    for f in (p / ".autoresearch" / "wave").glob("worker-*.pid"):
        try:
            os.kill(int(f.read_text()), signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.3)
    assert gone_now(run), "the run's sandbox died with its worker"
    (p / "train.py").write_text("half-written\n")                # and the main tree is dirty
    out = ok(script(p, "resume-session")).stdout
    assert f"wave: {quick} finished, not logged (val_bpb 0.900000)" in out, out
    assert f"wave: {slow} was lost" in out, out
    assert "submit-wave re-queues it" in out
    assert (p / "train.py").read_text() == WAVE_TARGET, "the kept state is restored"
    first = wait(p)
    assert f"candidate {quick}" in first and "recommend: keep" in first
    log_as_told(p, first)
    (p / ".autoresearch" / "worktrees" / slow / "slow.flag").unlink()
    assert f"submitted {slow}" in ok(script(p, "submit-wave")).stdout
    again = wait(p)
    assert f"candidate {slow}" in again and "recommend: rebase" in again, again
    log_as_told(p, again)
    final = wait(p)
    assert "recommend: keep" in final
    log_as_told(p, final)
    assert runs(p)[-1]["metric"] == pytest.approx(0.8)


def test_bad_input_gets_one_line_and_nothing_changes(project):
    p = project
    ok(script(p, "setup-session", "--tag", "w", "--dataset", "classics", "--budget", "1",
              "--workers", "2"))
    r = script(p, "new-candidate", "--description", "too early")
    assert r.returncode == 2 and "run and log the baseline first" in r.stderr
    r = script(p, "setup-session", "--tag", "w2", "--workers", "64")
    assert r.returncode == 2 and "CPU cores" in r.stderr
    ok(script(p, "run-experiment"))
    ok(script(p, "log-experiment", "--status", "keep", "--description", "baseline"))
    name = re.search(r"candidate (c\d+)", ok(script(p, "new-candidate", "--description", "x")).stdout).group(1)
    r = script(p, "submit-wave")
    assert r.returncode == 2 and "has no change yet" in r.stderr
    r = script(p, "log-experiment", "--candidate", name, "--status", "keep")
    assert r.returncode == 2 and "has not finished" in r.stderr
    before = (p / "autoresearch.jsonl").read_text()
    # The guard: a candidate's fixed files are as fixed as the project's; its target is editable.
    wt = p / ".autoresearch" / "worktrees" / name
    for path, denied in ((wt / "prepare.py", True), (wt / "train.py", False),
                         (wt / "train_mlx.py", True), (p / ".autoresearch" / "wave" / f"{name}.json", True)):
        answer = hook("guard.py", {"session_id": "s", "cwd": str(p), "tool_name": "Edit",
                                   "tool_input": {"file_path": str(path), "old_string": "a", "new_string": "b"}})
        assert ("deny" in answer.stdout) == denied, (path, answer.stdout)
    r = script(p, "run-experiment")
    assert r.returncode == 0, "no candidate in flight: a single run is fine"
    assert (p / "autoresearch.jsonl").read_text() == before
    ok(script(p, "new-candidate", "--drop", name))
    assert not wt.exists()


def test_stop_hook_and_progress_count_candidates_in_flight(project):
    p = project
    ok(script(p, "setup-session", "--tag", "w", "--dataset", "classics", "--budget", "1",
              "--policy", "strict", "--workers", "2", "--progress-every", "2",
              env={"CLAUDE_CODE_SESSION_ID": "conv"}))
    ok(script(p, "run-experiment"))
    ok(script(p, "log-experiment", "--status", "keep", "--description", "baseline"))
    names = [candidate(p, "one", GAIN_A=0.1), candidate(p, "two", GAIN_B=0.1)]
    for n in names:
        (p / ".autoresearch" / "worktrees" / n / "slow.flag").write_text("")
    ok(script(p, "submit-wave"))
    answer = json.loads(hook("stop.py", {"session_id": "conv", "cwd": str(p)}).stdout)
    assert answer["decision"] == "block" and "2 candidate(s) in flight" in answer["reason"], answer
    assert "wait-wave for the next result" in answer["reason"]
    (p / ".autoresearch" / "worktrees" / names[0] / "slow.flag").unlink()
    logged = log_as_told(p, wait(p))
    assert "## Progress after 2 runs" in logged
    assert f"1 candidate(s) in flight ({names[1]} running on cpu" in logged, logged
    assert "in flight" in (p / "autoresearch.md").read_text()
    (p / ".autoresearch" / "worktrees" / names[1] / "slow.flag").unlink()
    assert "re-based" in log_as_told(p, wait(p))      # two beat the baseline: one is re-based
    log_as_told(p, wait(p))
    answer = json.loads(hook("stop.py", {"session_id": "conv", "cwd": str(p)}).stdout)
    assert "in flight" not in answer["reason"]


@pytest.mark.slow
def test_two_workers_on_the_real_template(night):
    """The real train.py on the embedded data, two workers of one core each, a short
    budget: both candidates run at the same time, each on its own core."""
    n = night
    n.script("setup-session", "--tag", "two", "--dataset", "classics", "--target", "train.py",
             "--budget", "3", "--policy", "strict", "--workers", "2")
    _, out = n.script("run-experiment")
    n.script("log-experiment", "--status", "keep", "--description", "baseline")
    wts = []
    for desc, old, new in (("deeper", "DEPTH, WIDTH, HEAD_DIM = 2, 128, 64", "DEPTH, WIDTH, HEAD_DIM = 3, 128, 64"),
                           ("narrower", "DEPTH, WIDTH, HEAD_DIM = 2, 128, 64", "DEPTH, WIDTH, HEAD_DIM = 2, 64, 32")):
        _, out = n.script("new-candidate", "--description", desc)
        wt = re.search(r"worktree (\S+)", out).group(1)
        n.edit(old, new, path=os.path.join(wt, "train.py"))
        wts.append(wt)
    started = time.monotonic()
    n.script("submit-wave")
    results = [n.script("wait-wave", "--timeout", "300")[1] for _ in range(2)]
    wall = time.monotonic() - started
    for out in results:
        assert "status: ok candidate" in out, out
        line = re.search(r"^next: (log-experiment .*)$", out, re.M).group(1)
        n.script(*shlex.split(line))
    recs = [r for r in n.runs() if r.get("candidate")]
    assert {r["worker"] for r in recs} == {"cpu0", "cpu1"}
    assert all(1.0 < r["metric"] < 4.0 for r in recs)
    seconds = sum(r["seconds"] for r in recs)
    assert wall < 0.85 * seconds, f"the two ran one after the other ({wall:.1f}s for {seconds:.1f}s of runs)"
    assert n.git("status", "--porcelain") == ""


def test_the_simulation_of_many_workers_scales_runs_with_workers():
    """benchmarks/sim_waves.py through the real decision code: with an agent that takes
    no time, four workers stay busy and finish about four times the runs of one."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sim_waves.py"), "--sessions", "2",
                           "--hours", "2", "--workers", "1", "4", "--agent", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {int(l.split()[0]): l.split() for l in proc.stdout.splitlines() if re.match(r"^\s+\d+\s", l)}
    util, runs_h = {w: float(r[2].rstrip("%")) for w, r in rows.items()}, {w: float(r[3]) for w, r in rows.items()}
    assert util[4] >= 90 and util[1] >= 95, proc.stdout
    assert 3.3 < runs_h[4] / runs_h[1] < 4.2, proc.stdout


def test_a_new_session_archives_the_last_ones_open_candidates(project):
    p = project
    setup(p)
    name = candidate(p, "never logged", GAIN_A=0.1)
    ok(script(p, "submit-wave"))
    assert "recommend: keep" in wait(p)
    ok(script(p, "end-session"))
    git(p, "checkout", "-q", "main")
    ok(script(p, "setup-session", "--tag", "w2", "--dataset", "classics", "--budget", "1", "--workers", "2"))
    assert "no open candidates" in ok(script(p, "wait-wave", "--list")).stdout
    assert not (p / ".autoresearch" / "worktrees" / name).exists()
    archived = list((p / ".autoresearch" / "archive").glob(f"w-*/wave/{name}.json"))
    assert len(archived) == 1 and json.loads(archived[0].read_text())["state"] == "decided"
    assert "GAIN_A = 0.1" in git(p, "show", f"refs/autoresearch/w/cand-{name}:train.py")
    fresh = re.search(r"candidate (c\d+)", ok(script(p, "new-candidate", "--unchanged",
                                                     "--description", "x")).stdout).group(1)
    assert (p / ".autoresearch" / "worktrees" / fresh).is_dir()


NOISY_TARGET = WAVE_TARGET.replace("import os, subprocess, sys, time",
                                   "import os, random, subprocess, sys, time").replace(
    "{1.0 - GAIN_A - GAIN_B:.6f}",
    "{1.0 - GAIN_A - GAIN_B + 0.01 * random.Random(int(os.environ['AUTORESEARCH_SEED'])).gauss(0, 1):.6f}")


def test_a_wave_undoes_a_keep_its_runs_do_not_bear_out_and_rebases_what_ran_on_it(project):
    """The noise-aware rule's undo in a wave: discards built on a lucky keep undo it, the
    branch goes back, and a candidate still running on the undone keep is not kept with
    it: its own change is re-based onto the kept state."""
    p = project
    (p / "train.py").write_text(NOISY_TARGET)
    git(p, "commit", "-qam", "seeded stand-in")
    ok(script(p, "setup-session", "--tag", "w", "--dataset", "classics", "--budget", "1",
              "--timeout", "6", "--workers", "2"))
    for _ in range(3):
        ok(script(p, "run-experiment"))
    ok(script(p, "log-experiment", "--status", "keep", "--description", "baseline"))
    baseline = git(p, "rev-parse", "HEAD")
    lucky = candidate(p, "lucky", GAIN_A=0.015)
    ok(script(p, "submit-wave"))
    assert f"candidate {lucky}" in wait(p)
    ok(script(p, "log-experiment", "--candidate", lucky, "--status", "keep"))
    kept = git(p, "rev-parse", "HEAD")
    assert kept != baseline
    # A real gain on top of the lucky keep, held back until the undo has happened.
    riding = candidate(p, "real gain on top", GAIN_B=0.03)
    (p / ".autoresearch" / "worktrees" / riding / "slow.flag").write_text("")
    outs = []
    for i in range(1, 4):
        name = candidate(p, f"idea {i}", GAIN_B=-0.025, SLEEP=0.0001 * i)
        ok(script(p, "submit-wave"))
        assert f"candidate {name}" in wait(p)
        outs.append(ok(script(p, "log-experiment", "--candidate", name, "--status", "discard")).stdout)
        if "revert run" in outs[-1]:
            break
    assert "revert run 2" in outs[-1], outs
    assert git(p, "rev-parse", "HEAD") == baseline, "the branch is back on the baseline"
    assert all(r["base"] == kept for r in runs(p) if r.get("candidate", "").startswith("c")
               and r["candidate"] != lucky)
    (p / ".autoresearch" / "worktrees" / riding / "slow.flag").unlink()
    out = wait(p)
    assert f"candidate {riding}" in out and "recommend: rebase" in out and "undone since" in out, out
    logged = log_as_told(p, out)
    assert f"re-based {riding} onto {baseline[:7]}" in logged, logged
    assert git(p, "rev-parse", "HEAD") == baseline, "nothing brought the undone change back"
    rebased = re.search(r"as candidate (c\d+)", logged).group(1)
    text = (p / ".autoresearch" / "worktrees" / rebased / "train.py").read_text()
    assert re.search(r"^GAIN_B = 0.03\b", text, re.M), text
    assert re.search(r"^GAIN_A = 0.0 ", text, re.M), "its own change, without the undone one"
    final = wait(p)
    assert f"candidate {rebased}" in final
