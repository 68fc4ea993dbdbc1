"""What setup guesses about a repository of one's own, and says: a metric printed under
its own name, a script inside a package, seeds that never reach the randomness, the
scripts to name when the target is missing, what is fixed, the framework's version,
and the budget a script keeps for itself."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from plugin_helpers import commit_all, git, make_project, new_repo, ok, records, script

SCRIPT = '''\
import os, random
seed = int(os.environ.get("AUTORESEARCH_SEED", 0))
best_val_loss = 1e9
print("---")
print(f"val_nll: {2.0 + random.Random(seed).random() * 0.01:.6f}")
'''


def own_repo(path: Path, files: dict) -> Path:
    new_repo(path)
    for name, code in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(code)
    commit_all(path)
    return path


def refused(p, *args):
    """setup's refusal: exit 2, one line, and no branch left behind."""
    proc = script(p, "setup-session", "--tag", "t", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert git(p, "branch", "--list", "autoresearch/*") == ""
    return proc.stderr.strip()


@pytest.mark.parametrize("metric,inside,code", [
    ("val_loss", "best_val_loss", SCRIPT),
    ("accuracy", "accuracy_score", "from sklearn.metrics import accuracy_score\n" + SCRIPT),
])
def test_a_metric_only_inside_a_longer_name_is_refused_before_any_branch(tmp_path, metric, inside, code):
    p = own_repo(tmp_path / "own", {"train.py": code})
    said = refused(p, "--metric", metric)
    assert f"train.py never prints {metric} (only inside {inside})" in said
    assert "--metric-pattern" in said


PACKAGE = {
    "gpt/__init__.py": "",
    "gpt/model.py": "LOSS = 2.0\n",
    "gpt/train.py": "import os\nfrom .model import LOSS\nseed = os.environ['AUTORESEARCH_SEED']\n"
                    "print('---')\nprint(f'val_nll: {LOSS:.6f}')\n",
}


def test_a_script_inside_a_package_runs_as_a_module(tmp_path):
    p = own_repo(tmp_path / "own", PACKAGE)
    plain = subprocess.run([sys.executable, "gpt/train.py"], cwd=p, capture_output=True, text=True)
    assert "ImportError" in plain.stderr          # the default that used to be set up
    out = ok(script(p, "setup-session", "--tag", "t", "--target", "gpt/train.py", "--metric",
                    "val_nll", "--budget-via", "script", "--baseline-runs", "1")).stdout
    assert re.search(r"^  run +\S*python\S* -m gpt\.train$", out, re.M), out
    run = ok(script(p, "run-experiment")).stdout
    assert "METRIC val_nll=2.0" in run and "status: ok" in run


def test_a_package_below_the_root_is_refused_with_the_command_to_pass(tmp_path):
    p = own_repo(tmp_path / "own", {f"src/{k}": v for k, v in PACKAGE.items()})
    said = refused(p, "--target", "src/gpt/train.py", "--metric", "val_nll")
    assert "ModuleNotFoundError: pass --run" in said and "-m <package>.<module>" in said


RESEEDS = '''\
import os, random
seed = int(os.environ["AUTORESEARCH_SEED"])
random.seed(seed)
random.seed(1)        # a split fixed "for reproducibility", after the seed
QUALITY = 0.0
print("---")
print(f"val_nll: {2.0 - QUALITY + random.random() * 0.1:.6f}")
'''


def test_bit_identical_repeats_on_new_seeds_say_the_seed_does_not_reach_the_randomness(tmp_path):
    p = own_repo(tmp_path / "own", {"train.py": RESEEDS})
    ok(script(p, "setup-session", "--tag", "t", "--metric", "val_nll", "--budget-via", "script"))
    for _ in range(2):
        assert "recommend: rerun: baseline sample" in ok(script(p, "run-experiment")).stdout
    third = ok(script(p, "run-experiment")).stdout
    assert "recommend: keep: baseline" in third
    assert "bit-identical results: AUTORESEARCH_SEED does not reach the script's randomness" in third
    assert "the noise is unknown, not zero" in third and "noise sigma 0.0" not in third
    ok(script(p, "log-experiment", "--status", "keep", "--description", "baseline"))
    assert "noise sigma unknown: repeats on new seeds gave bit-identical" in \
        ok(script(p, "confidence")).stdout + ok(script(p, "summarize")).stdout + \
        (p / "autoresearch-summary.md").read_text()
    # A change is judged on its one run, not sent to confirm against a noise of zero.
    (p / "train.py").write_text(RESEEDS.replace("QUALITY = 0.0", "QUALITY = 0.01"))
    assert "recommend: keep" in ok(script(p, "run-experiment")).stdout


def test_a_missing_target_names_the_repositorys_own_training_scripts(tmp_path):
    trainer = ("import torch\n\ndef main():\n    loss.backward()\n    opt.step()\n\n"
               "if __name__ == '__main__':\n    main()\n")
    p = own_repo(tmp_path / "own", {"scripts/train_gpt.py": trainer, "utils.py": "X = 1\n",
                                    "sample.py": "if __name__ == '__main__':\n    print(1)\n"})
    said = refused(p, "--metric", "val_nll")
    assert "target train.py not found" in said
    assert "pass --target with the script that trains: --target scripts/train_gpt.py" in said
    assert "train_mlx.py" not in said and "utils.py" not in said


def fake_python(folder: Path, torch_version: str | None) -> Path:
    """An interpreter of the project's, named python3 as a run command names it: this
    one without its site-packages (-S), with a torch that only has its package
    metadata, or with none."""
    site = folder / "site"
    site.mkdir(parents=True)
    if torch_version:
        meta = site / f"torch-{torch_version}.dist-info"
        meta.mkdir()
        (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {torch_version}\n")
    exe = folder / "bin" / "python3"
    exe.parent.mkdir()
    exe.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" -S "$@"\n')
    exe.chmod(0o755)
    return exe


def test_the_research_config_says_what_is_fixed_and_the_frameworks_real_version(tmp_path):
    python = fake_python(tmp_path / "env", "2.5.1")
    p = own_repo(tmp_path / "own", {"train.py": "try:\n    import torch\nexcept ImportError:\n"
                                                "    pass\n" + SCRIPT})
    out = ok(script(p, "setup-session", "--tag", "t", "--metric", "val_nll", "--run",
                    f"{python} train.py", "--budget-via", "script")).stdout
    assert "torch 2.5.1" in out and "version unknown" not in out
    assert re.search(r"^  read-only +nothing but the session's records", out, re.M)
    assert "the harness only" not in out


def test_a_version_pinned_in_uv_lock_stands_in_before_uv_installs_it(tmp_path):
    p = own_repo(tmp_path / "own", {
        "train.py": "import torch\n" + SCRIPT,
        "uv.lock": 'version = 1\n\n[[package]]\nname = "torch"\nversion = "2.6.0"\n'})
    python = fake_python(tmp_path / "env", None)
    out = ok(script(p, "setup-session", "--tag", "t", "--metric", "val_nll", "--run",
                    f"{python} train.py", "--budget-via", "script")).stdout
    assert "torch 2.6.0 (pinned in uv.lock)" in out


ITERATIONS = '''\
import os
# The plan counts iterations; a time cap is read only as a safety net.
time_cap = os.getenv("AUTORESEARCH_TIME_BUDGET")
seed = os.getenv("AUTORESEARCH_SEED")
max_iters = 200
print(f"time cap from the environment: {time_cap}")
print("---")
print("val_nll: 2.000000")
'''


def test_budget_via_script_tells_the_truth_about_a_script_that_reads_the_budget(tmp_path):
    p = own_repo(tmp_path / "own", {"train.py": ITERATIONS})
    out = ok(script(p, "setup-session", "--tag", "t", "--metric", "val_nll", "--budget-via",
                    "script", "--budget", "150", "--baseline-runs", "1")).stdout
    assert "does not read AUTORESEARCH_TIME_BUDGET" not in out
    assert "runs do not get AUTORESEARCH_TIME_BUDGET, so train.py trains by its own default" in out
    ok(script(p, "run-experiment"))
    assert "time cap from the environment: None" in (p / "run.log").read_text()


def test_where_budget_and_seed_cannot_reach_setup_says_what_to_add(tmp_path):
    p = own_repo(tmp_path / "own", {"train.py": "import torch\nprint('---')\nprint('val_nll: 2.0')\n"})
    out = ok(script(p, "setup-session", "--tag", "t", "--metric", "val_nll")).stdout
    assert "budget = float(os.environ.get('AUTORESEARCH_TIME_BUDGET', 300))" in out
    assert "if time.time() - t0 > budget: break" in out
    assert "seed = int(os.environ.get('AUTORESEARCH_SEED', 0))`, then `torch.manual_seed(seed)`" in out


def test_a_run_command_that_sets_a_variable_first_is_accepted(tmp_path):
    """The advice above: an iteration count from the environment, set in --run."""
    p = own_repo(tmp_path / "own", {"train.py": "import os\nn = os.environ['MAX_ITERS']\n" + SCRIPT})
    out = ok(script(p, "setup-session", "--tag", "t", "--metric", "val_nll", "--baseline-runs", "1",
                    "--run", f"MAX_ITERS=2 {sys.executable} train.py")).stdout
    assert "run        MAX_ITERS=2 " in out
    assert "status: ok" in ok(script(p, "run-experiment")).stdout


# A loop that counts its steps, as most trainers do: the count comes from the session.
STEPS = '''\
import os, random, time
max_iters = int(os.environ.get("AUTORESEARCH_STEP_BUDGET", 5000))
random.seed(int(os.environ.get("AUTORESEARCH_SEED", 0)))
print("time budget from the environment:", os.environ.get("AUTORESEARCH_TIME_BUDGET"))
loss = 3.0
for step in range(max_iters):
    loss *= 0.99
    time.sleep(SLEEP)
print(f"trained {max_iters} steps")
print("---")
print(f"val_nll: {loss:.6f}")
'''


def test_a_step_budget_makes_runs_equal_whatever_the_machines_speed(tmp_path):
    """--budget-unit steps: the count reaches the script, the clock does not; a slower
    machine (or busier neighbours) changes the run's time but not its result, and the
    session says it no longer rewards speed and does not check the load."""
    p = own_repo(tmp_path / "own", {"train.py": STEPS.replace("SLEEP", "0.001")})
    out = ok(script(p, "setup-session", "--tag", "t", "--metric", "val_nll", "--budget-unit", "steps",
                    "--budget", "40", "--timeout", "60", "--baseline-runs", "1")).stdout
    assert "budget     40 steps per run (killed after 60 s), through AUTORESEARCH_STEP_BUDGET: " \
           "speed is not rewarded" in out
    assert "load check off" in out
    config = records(p)[0]
    assert config["budget_unit"] == "steps" and config["budget"] == 40 and config["load_check"] is False
    first = ok(script(p, "run-experiment")).stdout
    log = (p / "run.log").read_text()
    assert "trained 40 steps" in log and "time budget from the environment: None" in log
    assert "machine: load not checked" in first
    ok(script(p, "log-experiment", "--status", "keep", "--description", "baseline"))
    # The same code, ten times slower per step: the same 40 steps, the same loss.
    (p / "train.py").write_text(STEPS.replace("SLEEP", "0.01"))
    second = ok(script(p, "run-experiment")).stdout
    assert "trained 40 steps" in (p / "run.log").read_text()
    value = re.compile(r"METRIC val_nll=(\S+)")
    assert value.search(second).group(1) == value.search(first).group(1)


@pytest.mark.parametrize("args,said", [
    (("--budget-unit", "tokens", "--budget", "1000", "--timeout", "60"),
     "train.py never reads AUTORESEARCH_TOKEN_BUDGET: take its tokens from it (`max_tokens = "
     "int(os.environ.get('AUTORESEARCH_TOKEN_BUDGET', max_tokens))`"),
    (("--budget-unit", "steps", "--budget", "40"), "--budget-unit steps needs --budget N, a whole number "
     "of steps per run, and --timeout S"),
    (("--budget-unit", "steps", "--budget", "2.5", "--timeout", "60"), "a whole number of steps"),
])
def test_a_count_budget_the_script_cannot_take_is_refused_with_what_to_do(tmp_path, args, said):
    p = own_repo(tmp_path / "own", {"train.py": STEPS.replace("SLEEP", "0")})
    assert said in refused(p, "--metric", "val_nll", *args)


def test_the_harness_keeps_its_budget_in_seconds_on_the_runners_clock(tmp_path):
    said = refused(make_project(tmp_path / "h"), "--dataset", "classics", "--budget-unit", "tokens", "--budget", "1000000", "--timeout", "600")
    assert "is for a project of your own" in said and "--no-load-check" in said
