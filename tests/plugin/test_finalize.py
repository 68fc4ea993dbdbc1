"""finalize: the plan, the squash onto the starting branch, one branch per change."""


from plugin_helpers import git, ok, records, run_and_log, script, set_constant


def test_finalize_prints_the_plan_and_changes_nothing_without_yes(project):
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "keep", "lower lr", VAL_BPB=0.9)
    refused = script(project, "finalize")
    assert refused.returncode == 2 and "still active: end it first" in refused.stderr
    ok(script(project, "end-session"))
    before = git(project, "rev-parse", "main")
    out = ok(script(project, "finalize")).stdout
    assert "the 1 kept changes as one commit on main" in out
    assert "val_bpb 1.000000 -> 0.900000 (-10.00%)" in out and "- run 2 (+0.100000): lower lr" in out
    assert "git merge --squash autoresearch/t1" in out and "--yes" in out
    assert git(project, "rev-parse", "main") == before
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"


def test_finalize_squashes_the_kept_changes_onto_the_starting_branch(project):
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "keep", "lower lr", VAL_BPB=0.9)
    run_and_log(project, "discard", "wider", VAL_BPB=0.95)
    run_and_log(project, "keep", "even lower", VAL_BPB=0.8)
    kept_tree = git(project, "rev-parse", "autoresearch/t1^{tree}")
    before = git(project, "rev-parse", "main")
    ok(script(project, "end-session"))
    out = ok(script(project, "finalize", "--yes")).stdout
    assert "done; nothing was pushed" in out
    assert git(project, "rev-parse", "main~1") == before            # one new commit
    assert git(project, "rev-parse", "main^{tree}") == kept_tree     # exactly the kept code
    body = git(project, "log", "-1", "--format=%B", "main")
    assert "2 kept changes" in body and "lower lr" in body and "even lower" in body
    assert "wider" not in body
    assert git(project, "status", "--porcelain") == ""


def test_finalize_split_makes_one_branch_per_independent_change(project):
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "keep", "lower loss", VAL_BPB=0.9)
    with open(project / "train.py", "a") as f:                 # far from the first change
        f.write("# a faster epilogue\n")
    run_and_log(project, "keep", "epilogue", VAL_BPB=0.9)
    run_and_log(project, "keep", "faster", VAL_BPB=0.9, TOK_SEC=2000000)   # next to run 2's line
    ok(script(project, "end-session"))
    out = ok(script(project, "finalize", "--split", "--yes")).stdout
    base = records(project)[0]["base_commit"]
    for run in (2, 3):
        assert git(project, "rev-parse", f"autoresearch/t1-run{run}~1") == base
    alone = git(project, "show", "autoresearch/t1-run3:train.py")
    assert "a faster epilogue" in alone and "VAL_BPB = 1.0" in alone     # only its own change
    assert "VAL_BPB = 0.9" in git(project, "show", "autoresearch/t1-run2:train.py")
    assert "run 4 needs an earlier change" in out
    assert not git(project, "branch", "--list", "autoresearch/t1-run4")
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"


def undo_a_lucky_keep(session):
    """Baseline, a keep on one lucky run, then edits that measure like the baseline
    until log-experiment undoes the keep (the branch is back on the baseline's code)."""
    for _ in range(3):
        ok(script(session, "run-experiment"))
    ok(script(session, "log-experiment", "--status", "keep", "--description", "baseline"))
    set_constant(session, "VAL_BPB", 0.985)
    ok(script(session, "run-experiment"))
    ok(script(session, "log-experiment", "--status", "keep", "--description", "lucky"))
    for i in range(1, 6):
        set_constant(session, "VAL_BPB", 1.01)
        set_constant(session, "BUSY", 0.0001 * i)
        ok(script(session, "run-experiment"))
        out = ok(script(session, "log-experiment", "--status", "discard", "--description", f"idea {i}"))
        if "revert run 2" in out.stdout:
            break
    assert records(session)[-1].get("reverts") == 2


def test_finalize_after_every_keep_was_undone_says_there_is_nothing_to_take(session):
    """The branch is back on the base: not 'master has changed', and --split offers
    no undone run."""
    undo_a_lucky_keep(session)
    ok(script(session, "end-session"))
    before = git(session, "rev-parse", "main")
    for args in ((), ("--split",)):
        out = script(session, "finalize", *args)
        assert out.returncode == 2, out.stdout
        assert "no kept change beyond the baseline (every keep was undone)" in out.stderr
        assert "has changed since" not in out.stderr and "run2" not in out.stdout
    assert git(session, "rev-parse", "main") == before


def test_finalize_takes_a_keep_made_after_an_undone_one(session):
    undo_a_lucky_keep(session)
    set_constant(session, "VAL_BPB", 0.9)
    set_constant(session, "BUSY", 0.0)
    ok(script(session, "run-experiment"))
    ok(script(session, "log-experiment", "--status", "keep", "--description", "a real gain"))
    ok(script(session, "end-session"))
    out = ok(script(session, "finalize", "--split")).stdout
    keep = [r for r in records(session) if "run" in r][-1]["run"]
    assert f"autoresearch/s-run{keep}: a real gain" in out and "-run2:" not in out, out
    out = ok(script(session, "finalize", "--yes")).stdout
    assert "the 1 kept changes" in out and "lucky" not in out
    assert "VAL_BPB = 0.9" in git(session, "show", "main:train.py")


def test_an_own_script_with_its_own_seed_and_budget_is_described_as_it_ran(tmp_path):
    """A script that sets its own seed and budget: the status names no seed it ignores,
    results.tsv leaves throughput empty, and finalize's message names the data and the
    budget as they were."""
    from plugin_helpers import commit_all, new_repo, tsv_rows
    from .test_own_project import TOY_TARGET
    p = new_repo(tmp_path / "toy")
    (p / "train.py").write_text(TOY_TARGET)
    commit_all(p)
    ok(script(p, "setup-session", "--tag", "t", "--metric", "val_acc", "--run", "python train.py",
              "--policy", "strict"))
    run = ok(script(p, "run-experiment")).stdout
    assert "run 1 after" in run and "seed" not in run.split("run 1 after")[1].splitlines()[0], run
    ok(script(p, "log-experiment", "--status", "keep", "--description", "baseline"))
    (p / "train.py").write_text(TOY_TARGET.replace("ACC = 0.80", "ACC = 0.90"))
    ok(script(p, "run-experiment"))
    ok(script(p, "log-experiment", "--status", "keep", "--description", "more epochs"))
    assert [row[2:4] for row in tsv_rows(p)[1:]] == [["0.5", ""], ["0.5", ""]]
    ok(script(p, "end-session"))
    out = ok(script(p, "finalize")).stdout
    assert "Measured on the project's own data, the script's own budget per run" in out, out
