"""The plugin's library: one concept per module, in layers.

Each module imports only modules listed before it here (and the standard library),
so the library reads bottom-up and has no import cycle. The command modules in
scripts/ and the hooks build on these and never import one another.
"""

LAYERS = (
    "common",       # paths, session files, errors, atomic writes, the lock
    "templates",    # the harness and templates a project with no training code starts from
    "git",          # every git command the loop runs
    "copies",       # the copies of the scripts-only files, outside the project and in git
    "harness",      # the fixed files and their hashes; the hash of the measured code
    "agent_sandbox",  # what the agent's sandboxed Bash may not write; Claude Code's settings for it
    "parsing",      # THE metric parser
    "measure",      # the harness's result channel and the checks a result must pass
    "project",      # the kind of project: harness, karpathy clone or own; how runs reach it
    "launch",       # the measured run's first code: the harness from verified bytes
    "monitor",      # machine load around a run: disturbed or quiet
    "devices",      # platform, GPUs, cores, Apple Silicon, worker slots
    "records",      # the log: schema, reading, appending, results.tsv
    "stats",        # samples, noise from repeats, seeds, kept state, MAD
    "proposals",    # the model of proposals: an edit's effect, before and after it is measured
    "policy",       # THE keep rule: keep / discard / rerun, undo, the wave decision
    "candidates",   # a wave's candidates: state files and worktrees
    "session",      # lifecycle, loop ownership and end, messages and reports
    "report",       # the session as a page: the dashboard's and the HTML report's data and chart
    "sandbox",      # the run's sandbox: bubblewrap, sandbox-exec or none; what it hides and allows
    "runner",       # run a target: process group, timeout, status, checks
    "holdout",      # the sealed test split, scored once at a session's end
    "skypilot",     # waves on SkyPilot
    "slurm",        # waves on Slurm: sbatch jobs followed with squeue / sacct
    "waves",        # waves: workers, results, recovery
)
