#!/usr/bin/env bash
# The GPU path checked end to end in one command, on a lent accelerator machine.
#
#   bash benchmarks/gpu_check.sh --prepare   # HERE, with network: the classics cache and the wheels, into .gpucheck/
#   bash benchmarks/gpu_check.sh             # THERE, offline: train.py 60 s, bench.py, a three-run session
#   bash benchmarks/gpu_check.sh --cpu       # anywhere: the same steps on the CPU with toy budgets (the tests)
#
# What it runs, each in a throwaway folder (nothing is written into this repository):
#   1. train.py on `classics` for TRAIN_BUDGET seconds, as a person runs it;
#   2. bench.py: the step split, tok/s and the first (compiling) step;
#   3. a session through the plugin's scripts in a copy of this repository: setup-session,
#      then run-experiment + log-experiment three times (the baseline, a repeat of it on a
#      new seed, a small edit of train.py), then end-session.
# What it prints: one markdown table, with val_bpb, tok/s, MFU, peak memory and compile
# time of every run, and what the plugin's scripts cost around each run of the session.
# Every number comes from what the harness and the scripts write: `parse-metrics` on a
# run's output (the summary block), data/last_run.json, bench.py's --json line.
#
# Why a preparation step: the accelerator machine has torch, numpy, pyarrow and tiktoken
# but not rustbpe (it trains the tokenizer, so the cache is built here) nor jsonschema
# (the plugin's records are validated with it), and it reaches no network. --prepare
# builds the cache and downloads the wheels of jsonschema and its needs into .gpucheck/
# (ignored by git); carry that folder, and the check uses only what it brings.
set -euo pipefail

# ---------------------------------------------------------------------------
# Constants. The whole check must fit in 8 minutes on an H100: train.py's 60 s plus its
# compile and evaluation (~2 min), bench.py (~1 min, mostly the compile), three session
# runs of 30 s plus their compiles and evaluations (~3 min), the scripts themselves (s).

DATASET=classics            # embedded in the repository: no download there or here
TRAIN_BUDGET=60             # seconds of training for train.py on its own
RUN_BUDGET=30               # seconds of training for each run of the session
BENCH_STEPS=20              # bench.py's timed steps
BENCH_WARMUP=2              # bench.py's untimed steps first (they compile)
TARGET_SECONDS=480          # the whole check, on an H100; said at the end, never enforced
STEP_SLACK=300              # a step past its budget + this is stuck: it is killed
SESSION_TAG=gpucheck        # the session's name (branch autoresearch/gpucheck in the copy)
EDIT_FROM="WARMDOWN_RATIO = 0.5"   # the session's third run: a small edit of train.py
EDIT_TO="WARMDOWN_RATIO = 0.4"

# --cpu: the same steps at toy size, for a machine without a GPU (tests/test_gpu_check.py
# runs it on 2 cores in well under a minute). The evaluation shrinks to 4,096 tokens:
# AUTORESEARCH_EVAL_TOKENS only ever lowers it, and the session pins it at setup.
CPU_TRAIN_BUDGET=2
CPU_RUN_BUDGET=1
CPU_BENCH_STEPS=1
CPU_BENCH_WARMUP=1          # two steps in all: enough to see the loss fall, as tests/test_bench.py does
CPU_EVAL_TOKENS=4096
# ... and a toy model in the copy under check (as tests/test_integrity.py makes one): on
# 2 busy cores a step of the 4.7 M-parameter CPU model takes seconds, this one's a tenth.
# Where train.py no longer holds these lines, the CPU check runs its model as it is.
CPU_MODEL_EDITS=("    DEPTH, WIDTH, HEAD_DIM = 2, 256, 64" "    DEPTH, WIDTH, HEAD_DIM = 2, 64, 32"
                 "    TOTAL_BATCH_TOKENS = 2**12" "    TOTAL_BATCH_TOKENS = 2**11")

# The plugin's scripts import jsonschema; these are it and what it needs, at versions the
# scripts are tested with. rpds-py is compiled, so its wheel is fetched once for each
# CPython the accelerator machine may have (it has 3.12; 3.11 is this repository's CI,
# where the test runs the install); the others are pure Python. rpds-py 2026.9.1 has no
# wheel for 3.10.
WHEELS=(jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
        rpds-py==2026.9.1 attrs==26.1.0 typing_extensions==4.16.0)
WHEEL_PYTHONS=(3.11 3.12 3.13)
WHEEL_PLATFORMS=(manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_28_x86_64)
# What the check needs on the machine itself (the image has them; nothing installs them).
NEEDED_MODULES=(torch numpy pyarrow tiktoken)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARRY=${GPU_CHECK_DIR:-$ROOT/.gpucheck}   # what --prepare fills and the check reads
SCRIPTS=$ROOT/experiment-plugin/scripts

usage() {
    cat <<EOF
usage: bash benchmarks/gpu_check.sh [--prepare | --cpu] [--out DIR] [--keep]

  --prepare   here, with network: build the classics cache (rustbpe trains its tokenizer)
              and download the jsonschema wheels into ${CARRY#"$ROOT"/}/; carry that folder
  (none)      on the GPU machine, offline: train.py ${TRAIN_BUDGET} s, bench.py, a three-run
              session of ${RUN_BUDGET} s runs; prints one markdown table (about 6-8 min on an H100)
  --cpu       the same on the CPU with toy budgets (${CPU_TRAIN_BUDGET} s, ${CPU_RUN_BUDGET} s): a machine without a GPU
  --out DIR   also write the table (DIR/gpu_check.md) and every step's log (DIR/gpu_check.log)
  --keep      keep the throwaway folder (its path is printed) instead of removing it

environment: GPU_CHECK_PYTHON (default: .venv/bin/python where it exists, else python3),
GPU_CHECK_DIR (default .gpucheck), GPU_CHECK_TRAIN_BUDGET, GPU_CHECK_RUN_BUDGET (seconds)
EOF
}

fail() {   # one line that says what is wrong and what to do; exit 1
    echo "gpu_check: $*" >&2
    exit 1
}

say() {    # progress, so a person watching sees which step is running
    echo "gpu_check: $*" >&2
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

MODE=gpu OUT="" KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prepare) MODE=prepare ;;
        --cpu) MODE=cpu ;;
        --out) [ $# -ge 2 ] || fail "--out needs a folder: --out DIR"; OUT=$2; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) fail "unknown argument '$1': see bash benchmarks/gpu_check.sh --help" ;;
    esac
    shift
done

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then PY=$GPU_CHECK_PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
command -v "$PY" >/dev/null 2>&1 || fail "no python at '$PY': set GPU_CHECK_PYTHON to the interpreter that has torch"

for knob in GPU_CHECK_TRAIN_BUDGET GPU_CHECK_RUN_BUDGET; do
    value=${!knob:-}
    [[ -z "$value" || "$value" =~ ^[0-9]+([.][0-9]+)?$ ]] \
        || fail "$knob=$value: give a number of seconds, e.g. $knob=30"
done

# ---------------------------------------------------------------------------
# --prepare: here, where rustbpe and the package index are.

prepare() {
    "$PY" -c "import rustbpe" 2>/dev/null \
        || fail "$PY cannot import rustbpe, which trains the tokenizer: run 'bash dev.sh setup' first (or set GPU_CHECK_PYTHON)"
    mkdir -p "$CARRY/wheels"
    say "classics cache into $CARRY/cache"
    AUTORESEARCH_CACHE="$CARRY/cache" AUTORESEARCH_QUIET=1 "$PY" "$ROOT/prepare.py" --dataset "$DATASET" >/dev/null \
        || fail "preparing the $DATASET cache failed: run 'AUTORESEARCH_CACHE=$CARRY/cache $PY prepare.py --dataset $DATASET' to see why"
    local platforms=() version
    for p in "${WHEEL_PLATFORMS[@]}"; do platforms+=(--platform "$p"); done
    for version in "${WHEEL_PYTHONS[@]}"; do
        say "wheels for CPython $version into $CARRY/wheels"
        "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
            --python-version "$version" --implementation cp --abi "cp${version/./}" "${platforms[@]}" \
            -d "$CARRY/wheels" "${WHEELS[@]}" >"$CARRY/download.log" 2>&1 \
            || { grep -v "^WARNING" "$CARRY/download.log" | tail -n 5 >&2
                 fail "downloading ${WHEELS[*]} for CPython $version failed (is the package index reachable?): see $CARRY/download.log"; }
    done
    rm -f "$CARRY/download.log"
    if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 && ! git -C "$ROOT" check-ignore -q "$CARRY"; then
        say "note: git does not ignore $CARRY: add it to .gitignore or .git/info/exclude to carry it as an ignored path"
    fi
    echo "ready: $(du -sh "$CARRY" | cut -f1) in $CARRY; carry it to the GPU machine, run 'bash benchmarks/gpu_check.sh' there"
}

if [ "$MODE" = prepare ]; then
    prepare
    exit 0
fi

# ---------------------------------------------------------------------------
# The check. First everything it relies on, so a missing piece costs seconds, not a run.

if [ "$MODE" = cpu ]; then
    TRAIN_BUDGET=$CPU_TRAIN_BUDGET RUN_BUDGET=$CPU_RUN_BUDGET
    BENCH_STEPS=$CPU_BENCH_STEPS BENCH_WARMUP=$CPU_BENCH_WARMUP
    # The CPU's code, and no GPU for any process (CUDA_VISIBLE_DEVICES also reaches the
    # session's runs, whose environment is an allowlist that AUTORESEARCH_DEVICE is not on).
    export AUTORESEARCH_DEVICE=cpu CUDA_VISIBLE_DEVICES="" AUTORESEARCH_EVAL_TOKENS=$CPU_EVAL_TOKENS
fi
TRAIN_BUDGET=${GPU_CHECK_TRAIN_BUDGET:-$TRAIN_BUDGET}
RUN_BUDGET=${GPU_CHECK_RUN_BUDGET:-$RUN_BUDGET}

missing=$("$PY" -c "
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" "${NEEDED_MODULES[@]}")
[ -z "$missing" ] || fail "$PY lacks $missing: run this with the interpreter that has them (GPU_CHECK_PYTHON=...)"
command -v git >/dev/null 2>&1 || fail "git is not installed: the session's scripts need it"
if [ "$MODE" = gpu ]; then
    "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || fail "torch sees no CUDA device here: run this on the GPU machine, or pass --cpu for the CPU version"
fi
CACHE=$CARRY/cache
[ -f "$CACHE/$DATASET/manifest.json" ] \
    || fail "no prepared $DATASET cache in $CACHE: run 'bash benchmarks/gpu_check.sh --prepare' where rustbpe is installed, then carry ${CARRY#"$ROOT"/}/"
export AUTORESEARCH_CACHE=$CACHE AUTORESEARCH_DATASET=$DATASET AUTORESEARCH_QUIET=1
"$PY" "$ROOT/prepare.py" --dataset "$DATASET" --verify >/dev/null 2>&1 \
    || fail "the $DATASET cache in $CACHE does not verify: run 'bash benchmarks/gpu_check.sh --prepare' again and carry ${CARRY#"$ROOT"/}/ anew"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
if [ "$KEEP" = 1 ]; then say "throwaway folder: $WORK (kept)"; else trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK/logs" "$WORK/results"
LOGS=$WORK/logs RESULTS=$WORK/results
export AUTORESEARCH_SESSIONS=$WORK/sessions   # the scripts' copies of the records, not in ~/.cache

# The plugin's scripts need jsonschema. Where this interpreter lacks it, the carried
# wheels are installed into the throwaway folder, offline, and only the scripts' own
# processes see them (PYTHONPATH): train.py and bench.py run on the machine's packages.
SCRIPT_PATH=""
if ! "$PY" -c "import jsonschema" 2>/dev/null; then
    compgen -G "$CARRY/wheels/jsonschema-*.whl" >/dev/null \
        || fail "$PY lacks jsonschema and $CARRY/wheels has no wheel of it: run 'bash benchmarks/gpu_check.sh --prepare' where pip reaches the index, then carry ${CARRY#"$ROOT"/}/"
    "$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$CARRY/wheels" \
        --target "$WORK/site" jsonschema >"$LOGS/wheels.log" 2>&1 \
        || fail "installing the carried jsonschema wheels failed (no wheel of rpds-py for $("$PY" -V)?): see $LOGS/wheels.log; run --prepare with this Python in WHEEL_PYTHONS"
    SCRIPT_PATH=$WORK/site
fi

plugin() {   # a plugin script, run as the agent runs it, on this interpreter
    local name=$1; shift
    PYTHONPATH=$SCRIPT_PATH "$PY" "$SCRIPTS/$name" "$@"
}

step_failed() {   # the end of a step's log, then the one line
    local log=$1; shift
    tail -n 25 "$log" >&2 || true
    fail "$* (whole log: $log; rerun with --keep to keep it)"
}

TIMES=$RESULTS/times.tsv   # step <tab> wall seconds, read by the table
: >"$TIMES"
T_ALL=$(now)
on=$([ "$MODE" = cpu ] && echo "the CPU" || "$PY" -c "import torch; print(torch.cuda.get_device_name())")
say "on $on with $("$PY" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")')"

# The repository under check: a copy of this one as it is now (uncommitted edits
# included), made a repository of its own. Every step runs its train.py, and the session
# runs in it: the scripts make a branch, commit and reset there, never here.
PROJECT=$WORK/project
mkdir -p "$PROJECT"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$PROJECT"
else   # a copy without its .git (how a tree may travel): everything but what git would ignore
    tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./.tools --exclude=./.gpucheck \
        --exclude=./data --exclude=./.autoresearch --exclude=__pycache__ --exclude=.pytest_cache \
        -cf - . | tar -xf - -C "$PROJECT"
fi
edit() {   # FILE OLD NEW: the one line OLD becomes NEW; exit 1 where OLD is not there exactly once
    "$PY" - "$@" <<'EOF'
import sys
path, old, new = sys.argv[1:]
text = open(path, encoding="utf-8").read()
if text.count(old + "\n") != 1:
    sys.exit(1)
open(path, "w", encoding="utf-8").write(text.replace(old + "\n", new + "\n"))
EOF
}
if [ "$MODE" = cpu ]; then
    for ((i = 0; i < ${#CPU_MODEL_EDITS[@]}; i += 2)); do
        edit "$PROJECT/train.py" "${CPU_MODEL_EDITS[i]}" "${CPU_MODEL_EDITS[i + 1]}" \
            || say "note: train.py no longer holds '${CPU_MODEL_EDITS[i]#"${CPU_MODEL_EDITS[i]%%[! ]*}"}': the CPU check runs its own model (slower)"
    done
fi
(cd "$PROJECT" && git init -q -b main && git config user.name "GPU check" \
    && git config user.email gpu-check@localhost && git add -A && git commit -qm "the repository under check") \
    || fail "could not make the session's copy in $PROJECT a git repository"

# 1. train.py on its own, from a folder of its own (data/last_run.json lands there).
say "[1/3] train.py, ${TRAIN_BUDGET} s on $DATASET"
mkdir -p "$WORK/train"
t0=$(now)
(cd "$WORK/train" && AUTORESEARCH_TIME_BUDGET=$TRAIN_BUDGET \
    timeout "$(awk -v b="$TRAIN_BUDGET" -v s="$STEP_SLACK" 'BEGIN { print int(b + s) }')" \
    "$PY" -B "$PROJECT/train.py" >"$LOGS/train.log" 2>&1) \
    || step_failed "$LOGS/train.log" "train.py failed or ran past its budget + ${STEP_SLACK} s"
printf 'train\t%s\n' "$(since "$t0")" >>"$TIMES"
plugin parse-metrics "$LOGS/train.log" >"$RESULTS/train.json" \
    || step_failed "$LOGS/train.log" "train.py printed no summary block"
cp "$WORK/train/data/last_run.json" "$RESULTS/train.last_run.json"

# 2. bench.py: its last line is the profile as JSON.
say "[2/3] bench.py, ${BENCH_STEPS} timed steps"
mkdir -p "$WORK/bench"
t0=$(now)
(cd "$WORK/bench" && AUTORESEARCH_TIME_BUDGET=$TRAIN_BUDGET timeout "$STEP_SLACK" \
    "$PY" -B "$ROOT/bench.py" --target "$PROJECT/train.py" --steps "$BENCH_STEPS" --warmup "$BENCH_WARMUP" --json >"$LOGS/bench.log" 2>&1) \
    || step_failed "$LOGS/bench.log" "bench.py failed (or its loss did not fall)"
printf 'bench\t%s\n' "$(since "$t0")" >>"$TIMES"
tail -n 1 "$LOGS/bench.log" >"$RESULTS/bench.json"

session() {   # a script in the copy; its output to LOG, its wall time to TIMES as NAME
    local name=$1 label=$2 log=$3; shift 3
    local t0 rc=0
    t0=$(now)
    (cd "$PROJECT" && plugin "$name" "$@") >"$log" 2>&1 || rc=$?
    printf '%s\t%s\n' "$label" "$(since "$t0")" >>"$TIMES"
    return "$rc"
}

# The strict policy judges every run at once (keep or discard), so each of the three runs
# is logged; the default noise-aware rule would first ask for baseline repeats, which are
# runs with no log of their own. What the scripts do around a run is the same under both.
setup_args=(--tag "$SESSION_TAG" --dataset "$DATASET" --budget "$RUN_BUDGET" --python "$PY" --policy strict)
# A shared CPU is always busy with others: its load would only turn the runs into reruns.
[ "$MODE" = cpu ] && setup_args+=(--no-load-check)
# 3. The session.
say "[3/3] a session of three ${RUN_BUDGET} s runs through the plugin's scripts"
session setup-session setup "$LOGS/setup-session.log" "${setup_args[@]}" \
    || step_failed "$LOGS/setup-session.log" "setup-session failed"

for run in 1 2 3; do
    case $run in
        1) what="baseline" ;;
        2) what="the baseline again, on a new seed" ;;
        3) what="warmdown ratio 0.5 -> 0.4"
           edit "$PROJECT/train.py" "$EDIT_FROM" "$EDIT_TO" \
               || fail "train.py no longer holds the line '$EDIT_FROM': set EDIT_FROM and EDIT_TO at the top of benchmarks/gpu_check.sh to a line it has"
           ;;
    esac
    session run-experiment "run$run" "$LOGS/run$run.log" \
        || step_failed "$LOGS/run$run.log" "run $run of the session did not end ok (run.log: $PROJECT/run.log)"
    cp "$PROJECT/run.log" "$LOGS/run$run.train.log"
    plugin parse-metrics "$PROJECT/run.log" >"$RESULTS/run$run.json" \
        || step_failed "$PROJECT/run.log" "run $run printed no summary block"
    cp "$PROJECT/data/last_run.json" "$RESULTS/run$run.last_run.json"
    # Log as the keep rule recommends (a rerun, or anything but keep, is logged a discard).
    status=$(sed -n 's/^recommend: \([a-z_]*\).*/\1/p' "$LOGS/run$run.log" | tail -n 1)
    [ "$status" = keep ] || status=discard
    session log-experiment "log$run" "$LOGS/log$run.log" --status "$status" --description "$what" \
        || step_failed "$LOGS/log$run.log" "log-experiment failed after run $run"
done
session end-session end "$LOGS/end-session.log" || step_failed "$LOGS/end-session.log" "end-session failed"
printf 'all\t%s\n' "$(since "$T_ALL")" >>"$TIMES"

# ---------------------------------------------------------------------------
# The table: numbers as the harness and the scripts wrote them, nothing re-measured.

"$PY" - "$RESULTS" "$MODE" "$TRAIN_BUDGET" "$RUN_BUDGET" "$TARGET_SECONDS" >"$WORK/gpu_check.md" <<'EOF'
import json, os, sys

results, mode, train_budget, run_budget, target = sys.argv[1:]
times = dict(line.rstrip("\n").split("\t") for line in open(os.path.join(results, "times.tsv")))


def load(name):
    with open(os.path.join(results, name), encoding="utf-8") as f:
        return json.load(f)


def num(value, fmt):
    """A number as the table shows it; n/a where the harness had none (MFU on a CPU)."""
    return format(value, fmt) if isinstance(value, (int, float)) else "n/a"


COLUMNS = ["step", "val_bpb", "tok/s", "MFU %", "peak MB", "compile s", "wall s",
           "run-experiment overhead s", "log-experiment s"]
rows = []


def run_row(label, metrics, record, wall, runner="-", log="-"):
    """A training run: the summary block (via parse-metrics) and its last_run.json.
    compile s is the training not counted in the budget: the first steps, which compile."""
    rows.append([label, num(metrics.get("val_bpb"), ".4f"), num(metrics.get("avg_tok_sec"), ",.0f"),
                 num(metrics.get("mfu_percent"), ".1f"), num(metrics.get("peak_memory_mb"), ",.0f"),
                 num(record["training"].get("untimed_seconds"), ".1f"), wall, runner, log])


train = load("train.json")
run_row(f"train.py {train_budget} s", train, load("train.last_run.json"), num(float(times["train"]), ".1f"))
bench = load("bench.json")
rows.append([f"bench.py ({bench['step_ms']} ms/step)", "-", num(bench["tok_per_sec"], ",.0f"),
             num(bench["mfu_percent"], ".1f"), num(bench["peak_memory_mb"], ",.0f"),
             num(bench["first_step_s"], ".1f"), num(float(times["bench"]), ".1f"), "-", "-"])
rows.append(["setup-session", "-", "-", "-", "-", "-", num(float(times["setup"]), ".2f"), "-", "-"])
names = {1: "baseline", 2: "repeat", 3: "edit"}
for n in (1, 2, 3):
    metrics, wall = load(f"run{n}.json"), float(times[f"run{n}"])
    # What run-experiment adds to a run: its wall time less the run's own total_seconds
    # (the hash checks, the load reading, the sandbox, the served evaluation's plumbing).
    runner = wall - metrics["total_seconds"] if isinstance(metrics.get("total_seconds"), (int, float)) else None
    run_row(f"session run {n} ({names[n]}, {run_budget} s)", metrics, load(f"run{n}.last_run.json"),
            num(wall, ".1f"), num(runner, ".2f"), num(float(times[f"log{n}"]), ".2f"))
rows.append(["end-session", "-", "-", "-", "-", "-", num(float(times["end"]), ".2f"), "-", "-"])

print("| " + " | ".join(COLUMNS) + " |")
print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|")
for row in rows:
    print("| " + " | ".join(str(c) for c in row) + " |")
total = float(times["all"])
within = "" if mode == "cpu" else (f" (target: under {target} s on an H100: "
                                   f"{'met' if total <= float(target) else 'MISSED'})")
print(f"\nwhole check: {total:.0f} s{within}. run-experiment overhead = its wall time less the "
      "run's own total_seconds; compile s = training time not counted in the budget (the first "
      "steps, which compile; bench.py: its first step); wall s = the step's whole process.")
EOF
cat "$WORK/gpu_check.md"
if [ -n "$OUT" ]; then
    # Two files, whatever the number of steps: the table, and every log one after another.
    mkdir -p "$OUT" && cp "$WORK/gpu_check.md" "$OUT/" \
        && for log in "$LOGS"/*.log; do echo "===== $(basename "$log")"; cat "$log"; done >"$OUT/gpu_check.log" \
        || fail "could not write into --out $OUT"
fi
