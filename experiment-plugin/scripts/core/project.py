"""What kind of project a session runs in, and how its runs reach the training script.

Three kinds, one loop:
  harness    this project's fixed harness (prepare.py with --dataset/--verify and
             data_sources.py): the harness measures val_bpb on its result channel.
  karpathy   a clone of karpathy/autoresearch or a port of it (its prepare.py with
             TIME_BUDGET and evaluate_bpb, a train.py that imports them): val_bpb,
             lower is better, read from the run's printed summary block.
  own        any other git repository with a training script: the metric it prints,
             the command that runs it, its own data.

Only the harness reads AUTORESEARCH_DATASET; a script reads the budget and the seed
only if it asks for them (AUTORESEARCH_TIME_BUDGET, AUTORESEARCH_SEED). This module
finds out which, so that setup can say what reaches the run and what does not.
"""
from __future__ import annotations

import os
import re
import shlex

from .common import PLOT, PLOT_TRACKED
from .git import git

HARNESS, KARPATHY, OWN = "harness", "karpathy", "own"
KIND_NAMES = {HARNESS: "this project's harness",
              KARPATHY: "a karpathy/autoresearch clone",
              OWN: "your own training repository"}
BUDGET_ENV = "AUTORESEARCH_TIME_BUDGET"
SEED_ENV = "AUTORESEARCH_SEED"

# karpathy/autoresearch keeps its data and tokenizer in ~/.cache/autoresearch/ (its
# prepare.py's CACHE_DIR): the validation shard is pinned, the tokenizer is trained once.
KARPATHY_DATA_CHECK = ('test -f "$HOME/.cache/autoresearch/tokenizer/tokenizer.pkl" && '
                       'test -f "$HOME/.cache/autoresearch/data/shard_06542.parquet"')
KARPATHY_PREPARE = "uv run prepare.py"

# Metric names that are better when higher; anything else defaults to lower.
HIGHER = re.compile(r"acc|accuracy|f1|auc|score|reward|precision|recall|bleu|rouge|map|"
                    r"win|success|throughput|tok_sec|mfu", re.IGNORECASE)


def text(root: str, name: str) -> str:
    try:
        with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def kind(root: str, target: str) -> str:
    prepare = text(root, "prepare.py")
    if prepare and os.path.isfile(os.path.join(root, "data_sources.py")) and "--verify" in prepare:
        return HARNESS
    code = text(root, target)
    if ("TIME_BUDGET" in prepare and "evaluate_bpb" in prepare
            and re.search(r"^\s*from\s+prepare\s+import", code, re.MULTILINE)):
        return KARPATHY
    return OWN


def uses_uv(root: str) -> bool:
    """A project managed by uv: a uv.lock, or a [tool.uv] table in pyproject.toml."""
    return (os.path.isfile(os.path.join(root, "uv.lock"))
            or "[tool.uv" in text(root, "pyproject.toml"))


def default_run(root: str, target: str, python: str) -> str:
    """How the person would start the script: `uv run` where uv manages the project,
    else the project's interpreter on it."""
    if uses_uv(root):
        return f"uv run {shlex.quote(target)}"
    return f"{shlex.quote(python)} {shlex.quote(target)}"


def reads(root: str, files, name: str) -> bool:
    """Whether any of `files` mentions `name` (an environment variable it reads, a
    metric it prints)."""
    return any(name in text(root, f) for f in files)


def budget_constant(root: str, files) -> float | None:
    """A script's own fixed budget: `TIME_BUDGET = 300` in prepare.py or the target."""
    for f in ("prepare.py", *files):
        m = re.search(r"^TIME_BUDGET\s*=\s*([0-9][0-9_.]*)", text(root, f), re.MULTILINE)
        if m:
            return float(m.group(1).replace("_", ""))
    return None


def default_direction(metric: str) -> str:
    return "higher" if HIGHER.search(metric) and "loss" not in metric and "bpb" not in metric \
        else "lower"


def framework(root: str, target: str, project_kind: str) -> str | None:
    """The framework the target imports, read from its text (never imported here);
    in this project's harness, a template that imports none is taken for its kind."""
    code = text(root, target)
    for name in ("mlx", "torch", "jax", "tensorflow", "sklearn"):
        if re.search(rf"^\s*(import|from)\s+{name}\b", code, re.MULTILINE):
            return {"sklearn": "scikit-learn"}.get(name, name)
    if project_kind == HARNESS:
        return "mlx" if "mlx" in os.path.basename(target) else "torch"
    return None


def plot_name(root: str) -> str:
    """progress.png, unless the person's repository tracks a file of that name (a
    karpathy/autoresearch clone commits one): then the plot goes beside it, under
    another name, and theirs is never touched."""
    return PLOT_TRACKED if git(root, "ls-files", "--", PLOT) else PLOT


def plot_of(config: dict) -> str:
    return config.get("plot") or PLOT
