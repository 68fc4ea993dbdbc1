"""Waves on a real Slurm cluster: munged, slurmctld and slurmd started by the tests
(tests/slurm_cluster.py, two one-CPU job slots), each candidate an sbatch job, and the
faults a cluster has: a job cancelled mid-run, slurmd killed and restarted, the node
set down, the agent's session dying mid-wave. Everything through the plugin's scripts,
real git repositories and the real daemons."""

import json
import os
import re
import signal
import time

import pytest

from plugin_helpers import (WAVE_TARGET, edit_target, git, log_as_told, make_project, ok, records,
                            runs, script, stop_workers, wait)

# One process runs them all: the cluster starts once, and its two slots are theirs.
pytestmark = pytest.mark.xdist_group("slurm")

SECONDS = 30                    # the longest any wait here may take


@pytest.fixture
def project(tmp_path, slurm_cluster):
    p = make_project(tmp_path / "project")
    (p / "train.py").write_text(WAVE_TARGET)
    git(p, "commit", "-qam", "wave stand-in")
    yield p
    stop_workers(p)
    # Whatever a test left in the queue goes, so the next test has both slots.
    for job in slurm_cluster.jobs():
        slurm_cluster.run("scancel", job, check=False)


def run(p, cluster, *args, **kw):
    return ok(script(p, *args, env=cluster.env, **kw)).stdout


def setup(p, cluster, *extra, workers=2):
    return run(p, cluster, "setup-session", "--tag", "sl", "--dataset", "classics", "--budget", "1",
               "--policy", "strict", "--timeout", "20", "--workers", str(workers),
               "--backend", "slurm", *extra)


def candidate(p, cluster, description, slow=False, unchanged=False, **constants) -> str:
    out = run(p, cluster, "new-candidate", "--description", description,
              *(["--unchanged"] if unchanged else []))
    name = re.search(r"candidate (c\d+)", out).group(1)
    tree = p / ".autoresearch" / "worktrees" / name
    if constants:
        edit_target(tree, **constants)
    if slow:
        (tree / "slow.flag").write_text("")     # the stand-in runs until the flag goes
    return name


def baseline(p, cluster):
    """The baseline, as a candidate of the unchanged code: a job like any other."""
    candidate(p, cluster, "baseline", unchanged=True)
    run(p, cluster, "submit-wave")
    out = wait(p, SECONDS, cluster.env)
    assert "recommend: keep: baseline" in out, out
    log_as_told(p, out, cluster.env)


def state(p, name) -> dict:
    return json.loads((p / ".autoresearch" / "wave" / f"{name}.json").read_text())


def job_of(p, name) -> str | None:
    path = p / ".autoresearch" / "wave" / f"{name}.running"
    try:
        return json.loads(path.read_text()).get("job")
    except (OSError, ValueError):
        return None


def until(what, check, timeout=SECONDS):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not after {timeout}s"
        time.sleep(0.2)


def running_job(p, cluster, name) -> str:
    """The candidate's job id, once squeue says it runs."""
    def check():
        job = job_of(p, name)
        return job if job and cluster.run("squeue", "-h", "-j", job, "-o", "%T",
                                          check=False).strip() == "RUNNING" else None
    return until(f"{name}'s job running", check)


def one_slow_job(p, cluster) -> tuple[str, str]:
    """A session of one worker whose baseline job runs until the test lets it go on."""
    setup(p, cluster, workers=1)
    name = candidate(p, cluster, "baseline", slow=True, unchanged=True)
    run(p, cluster, "submit-wave")
    return name, running_job(p, cluster, name)


def go_on(p, name):
    (p / ".autoresearch" / "worktrees" / name / "slow.flag").unlink()


def test_a_wave_runs_as_sbatch_jobs_two_at_once_and_is_logged_as_locally(project, slurm_cluster):
    p, c = project, slurm_cluster
    out = setup(p, c, "--cpus-per-task", "1")
    assert "2 worker(s) on slurm (slurm-0, slurm-1)" in out, out
    config = records(p)[0]
    assert config["backend"] == "slurm" and config["slurm"]["cpus_per_task"] == 1
    r = script(p, "run-experiment", env=c.env)
    assert r.returncode == 2 and "runs on Slurm" in r.stderr, "the baseline goes to the cluster too"
    baseline(p, c)
    # Two ideas on the two slots: both jobs run at the same time, each on one CPU.
    a = candidate(p, c, "idea A", slow=True, GAIN_A=0.1)
    b = candidate(p, c, "idea B", slow=True, GAIN_B=0.05)
    run(p, c, "submit-wave")
    jobs = {n: running_job(p, c, n) for n in (a, b)}
    assert len(set(jobs.values())) == 2
    assert sorted(c.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").split()) == sorted(jobs.values())
    info = c.run("scontrol", "show", "job", "-o", jobs[a])
    assert f"JobName={config['slurm']['prefix']}-{a}" in info and "NumCPUs=1" in info
    assert f"WorkDir={p / '.autoresearch' / 'worktrees' / a}" in info
    go_on(p, a)
    first = wait(p, SECONDS, c.env)
    assert f"candidate {a} on slurm-" in first and "recommend: keep" in first, first
    log_as_told(p, first, c.env)
    go_on(p, b)
    second = wait(p, SECONDS, c.env)
    assert f"candidate {b}" in second and "recommend: rebase" in second, second
    log_as_told(p, second, c.env)
    # The loser comes back on the winner's change as a new job, and the gains add up.
    third = wait(p, SECONDS, c.env)
    log_as_told(p, third, c.env)
    logged = runs(p)
    assert [r["metric"] for r in logged] == [1.0, pytest.approx(0.9), pytest.approx(0.95),
                                             pytest.approx(0.85)]
    assert all(r["backend"] == "slurm" and r["job"].isdigit() for r in logged)
    assert logged[1]["job"] == jobs[a] and logged[2]["job"] == jobs[b]
    # What the job printed came back through its output file: the seed it was given.
    assert f"seed {logged[1]['seed']}" in (p / ".autoresearch" / "wave" / f"{a}.log").read_text()
    # end-session takes what is left out of the queue.
    left = candidate(p, c, "left running", slow=True, GAIN_A=0.2)
    run(p, c, "submit-wave")
    job = running_job(p, c, left)
    out = run(p, c, "end-session")
    assert f"Slurm: cancelled 1 job(s) of the session ({job})" in out, out
    assert c.jobs() == []


def test_a_gres_the_cluster_lacks_is_a_crash_that_says_what_sbatch_said(project, slurm_cluster):
    p, c = project, slurm_cluster
    r = script(p, "setup-session", "--tag", "g", "--gres", "gpu:1", env=c.env)
    assert r.returncode == 2 and "are for --backend slurm" in r.stderr
    setup(p, c, "--gres", "gpu:1", workers=1)
    name = candidate(p, c, "baseline", unchanged=True)
    run(p, c, "submit-wave")
    out = wait(p, SECONDS, c.env)
    assert "status: crash" in out and "sbatch failed" in out and "gres" in out.lower(), out
    assert f"--status crash" in out


def test_a_job_cancelled_mid_run_is_a_crash_with_its_cause_logged_once(project, slurm_cluster):
    p, c = project, slurm_cluster
    name, job = one_slow_job(p, c)
    c.run("scancel", job)
    out = wait(p, SECONDS, c.env)
    assert f"status: crash candidate {name}" in out, out
    assert f"(Slurm job {job} ended CANCELLED: it was cancelled (scancel, or an administrator))" in out
    assert f"CANCELLED AT" in out, "the tail of its output shows Slurm's own line"
    log_as_told(p, out, c.env)
    assert [(r["candidate"], r["status"], r["job"]) for r in runs(p)] == [(name, "crash", job)]
    assert "no candidates in flight" in wait(p, 5, c.env)


def test_a_job_outlives_slurmd_killed_and_restarted(project, slurm_cluster):
    p, c = project, slurm_cluster
    name, job = one_slow_job(p, c)
    c.kill_slurmd()
    time.sleep(1)
    c.start_slurmd()
    go_on(p, name)
    out = wait(p, SECONDS, c.env)
    assert f"status: ok candidate {name}" in out and "recommend: keep" in out, out
    log_as_told(p, out, c.env)
    assert [(r["status"], r["metric"], r["job"]) for r in runs(p)] == [("keep", 1.0, job)]


def test_a_node_set_down_gets_the_candidate_a_new_job_and_one_result(project, slurm_cluster):
    p, c = project, slurm_cluster
    name, first = one_slow_job(p, c)
    c.set_node("down", reason="test")
    try:
        second = until("a second job", lambda: (job_of(p, name) or first) != first and job_of(p, name))
        assert c.run("squeue", "-h", "-t", "all", "-j", first, "-o", "%T").strip() == "NODE_FAIL"
    finally:
        c.set_node("resume")
    running_job(p, c, name)
    go_on(p, name)
    out = wait(p, SECONDS, c.env)
    assert f"status: ok candidate {name}" in out, out
    log_as_told(p, out, c.env)
    assert [(r["candidate"], r["status"], r["job"]) for r in runs(p)] == [(name, "keep", second)]
    text = (p / ".autoresearch" / "wave" / f"{name}.log").read_text()
    assert f"slurm: job {first} ended NODE_FAIL (its node failed); submitted again" in text, text


def test_resume_after_the_agent_died_finds_the_running_job_and_the_finished_one(project, slurm_cluster):
    p, c = project, slurm_cluster
    setup(p, c)
    baseline(p, c)
    quick = candidate(p, c, "quick idea", slow=True, GAIN_A=0.1)
    slow = candidate(p, c, "slow idea", slow=True, GAIN_B=0.05)
    run(p, c, "submit-wave")
    slow_job, quick_job = running_job(p, c, slow), running_job(p, c, quick)
    # The agent's machine goes: the workers that follow the jobs die with it. The
    # cluster goes on, and the quick job ends before anyone reads its result.
    for f in (p / ".autoresearch" / "wave").glob("worker-*.pid"):
        try:
            os.killpg(int(f.read_text()), signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.5)
    go_on(p, quick)
    until("the quick job done", lambda: c.run("squeue", "-h", "-t", "all", "-j", quick_job, "-o", "%T",
                                              check=False).strip() == "COMPLETED")
    assert state(p, quick)["state"] == "running" and state(p, slow)["state"] == "running"
    out = run(p, c, "resume-session")
    assert f"wave: {quick} finished as Slurm job {quick_job} (COMPLETED on n1)" in out, out
    assert f"wave: {slow} is still running as Slurm job {slow_job} (RUNNING on n1)" in out, out
    first = wait(p, SECONDS, c.env)
    assert f"candidate {quick}" in first and "recommend: keep" in first, first
    log_as_told(p, first, c.env)
    go_on(p, slow)
    second = wait(p, SECONDS, c.env)
    assert f"candidate {slow}" in second, second
    log_as_told(p, second, c.env)
    # Each ran as the one job it had: read back, never submitted again, logged once.
    assert sorted((r["candidate"], r["job"]) for r in runs(p)[1:]) == sorted(
        [(quick, quick_job), (slow, slow_job)])
    assert len(c.run("squeue", "-h", "-t", "all", "-n",
                     f"{records(p)[0]['slurm']['prefix']}-{slow}", "-o", "%i").split()) == 1


def test_a_controller_restart_mid_run_neither_loses_nor_repeats_the_job(project, slurm_cluster):
    p, c = project, slurm_cluster
    name, job = one_slow_job(p, c)
    c.stop_slurmctld()
    # Long enough for squeue to give up (about 4 s here): the worker is told the
    # controller cannot be reached, which is not the end of the job.
    time.sleep(6)
    assert "still running" in wait(p, 1, c.env)
    c.start_slurmctld()
    go_on(p, name)
    out = wait(p, SECONDS, c.env)
    assert f"status: ok candidate {name}" in out, out
    log_as_told(p, out, c.env)
    assert [(r["status"], r["job"]) for r in runs(p)] == [("keep", job)]
