#!/usr/bin/env bash
# One entry point for a fresh clone:
#   bash dev.sh demo   set up .venv, prepare the embedded `classics` data, train for 60 s
#   bash dev.sh test   set up .venv (+ the Claude Code CLI and Chromium for plugin tests), run pytest (2 processes)
#   bash dev.sh setup  only set up .venv
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv
CLAUDE_VERSION=2.1.197   # the last Claude Code release that runs on Node 20

setup() {
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then
        # No NVIDIA GPU: take the CPU build of torch instead of a multi-GB CUDA one.
        "$VENV/bin/python" -m pip install -q "torch==2.13.0" \
            || "$VENV/bin/python" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
    fi
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
}

setup_claude() {
    # The real Claude Code CLI, for the plugin tests. Installed without a lock file.
    if [ ! -x .tools/claude/node_modules/.bin/claude ] && command -v npm >/dev/null 2>&1; then
        npm install -q --prefix .tools/claude --no-save --no-package-lock --no-audit --no-fund \
            "@anthropic-ai/claude-code@$CLAUDE_VERSION"
    fi
}

setup_system() {
    # Debian's packages the tests use: Chromium (the dashboard's browser tests), bubblewrap
    # (the run's sandbox), socat (Claude Code's own sandbox for the agent's Bash), and Slurm
    # with munge (the one-node cluster the Slurm backend's tests start).
    # Installed where apt-get can, i.e. as root; a test that needs a missing one fails.
    local missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
    command -v socat >/dev/null 2>&1 || missing+=(socat)
    [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] || missing+=(slurm-wlm)
    [ -x /usr/sbin/munged ] || missing+=(munge)
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
            || echo "dev.sh: could not install ${missing[*]}; the tests that need them will fail" >&2
    fi
}

pytest_phase() {
    # One pytest run of the suite's two; a phase that selects no test (exit 5) is not a failure.
    "$VENV/bin/python" -m pytest "$@" || { rc=$?; [ "$rc" -eq 5 ] || exit "$rc"; }
}

case "${1:-}" in
    setup) setup ;;
    demo)
        setup
        "$VENV/bin/python" prepare.py --dataset classics
        AUTORESEARCH_DATASET=classics AUTORESEARCH_TIME_BUDGET=${DEMO_BUDGET:-60} "$VENV/bin/python" train.py
        ;;
    test)
        # The CLI (npm) and Debian's packages (apt) install while pip fills .venv: a fresh clone is
        # ready in the time of the slowest of the three rather than their sum.
        setup_claude & claude_pid=$!
        setup_system & system_pid=$!
        setup
        wait "$claude_pid"
        wait "$system_pid"
        shift
        # Two processes: the runs under a wall-clock budget overlap (8 min instead of 18 on
        # 2 cores, measured). `bash dev.sh test -n 0` runs them in this process.
        # The tests marked `quiet` need the CPUs to themselves: they run after the rest, alone.
        AUTORESEARCH_QUIET_TESTS=later pytest_phase -n 2 --dist loadgroup "$@"
        AUTORESEARCH_QUIET_TESTS=only pytest_phase "$@"
        ;;
    *) echo "usage: bash dev.sh demo|test|setup" >&2; exit 2 ;;
esac
