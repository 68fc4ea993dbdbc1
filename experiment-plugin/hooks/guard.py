#!/usr/bin/env python3
"""PreToolUse guard: while a session is active, keep the measurement honest.

Claude Code sends the tool call as JSON on stdin. This hook denies
  * Edit / Write / MultiEdit / NotebookEdit of the fixed harness (prepare.py,
    dataset_cache.py, data_sources.py, datasets/), of the files only the scripts write
    (autoresearch.jsonl, results.tsv, run.log, progress.png, .autoresearch/) and of
    dependency manifests (pyproject.toml, uv.lock, requirements.txt, ...);
  * Bash commands that write to those files (redirections, rm/mv/cp/tee/sed -i/...,
    inline Python that opens them for writing), that move git behind the scripts'
    back (git reset, git stash, git clean, git checkout <rev> -- <fixed file>), or
    that install packages;
and allows everything else, including reading any file. A deny is the documented
PreToolUse JSON with a reason that tells the agent what to do instead. With no
active session (no .autoresearch/state.json saying so) it allows everything.

It is a safety net, not a sandbox: run-experiment also checks the fixed files'
hashes around every run and refuses to record a run that changed them.
"""
import json
import os
import re
import shlex
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "scripts"))
from core import common, harness, records, candidates, session  # noqa: E402

FILE_TOOLS = {"Edit": "file_path", "Write": "file_path", "MultiEdit": "file_path",
              "NotebookEdit": "notebook_path"}

INSTALLERS = [  # token sequences that install or add packages
    ("pip", "install"), ("pip3", "install"), ("-m", "pip", "install"), ("uv", "add"),
    ("uv", "pip", "install"), ("uv", "sync"), ("uv", "tool", "install"), ("pipx", "install"),
    ("poetry", "add"), ("pdm", "add"), ("conda", "install"), ("mamba", "install"),
    ("micromamba", "install"), ("npm", "install"), ("npm", "i"), ("pnpm", "add"),
    ("yarn", "add"), ("apt", "install"), ("apt-get", "install"), ("brew", "install"),
    ("cargo", "install"), ("cargo", "add"), ("easy_install",),
]
WRITERS_ANY = {"rm", "mv", "tee", "truncate", "touch", "shred", "unlink", "chmod", "chown"}
WRITERS_LAST = {"cp", "ln", "install", "rsync"}          # only the destination is written
IN_PLACE = {"sed", "perl", "gsed"}                       # with -i
PY_WRITE = re.compile(r"""open\([^)]*['"][wax+]|write_(text|bytes)|unlink|remove|rename|replace|rmtree|truncate""")
SEPARATORS = {";", "&&", "||", "|", "&", "\n", "(", ")"}
PREFIXES = {"sudo", "command", "env", "nohup", "time", "exec", "xargs"}


def relative(root, cwd, path):
    """`path` as the tool call means it (from its cwd, ~ expanded), relative to the root."""
    return os.path.relpath(os.path.normpath(os.path.join(cwd, os.path.expanduser(path))), root)


def session_config(root):
    """The session's config line, read once per hook call."""
    if root not in _CONFIG:
        _CONFIG[root] = records.read_config(root) or {}
    return _CONFIG[root]


_CONFIG = {}


def is_fixed(root, rel):
    """The harness, or one of the session's --read-only files."""
    return (rel in harness.FIXED_FILES or rel.split(os.sep)[0] in harness.FIXED_DIRS
            or rel in (session_config(root).get("read_only") or []))


def protected(root, cwd, path):
    """Why `path` may not be written, or None if it may."""
    rel = relative(root, cwd, path)
    if rel.startswith(".."):
        return None
    inside = candidates.candidate_root(root, rel)
    if inside:                  # a candidate's worktree: judged like the project itself
        rel = inside[1]
    top = rel.split(os.sep)[0]
    if is_fixed(root, rel):
        return (f"{rel} is part of the fixed harness (data, tokenizer, evaluation): every run "
                "must be measured the same way, so it cannot change during a session. Edit only "
                "the session's target template; to undo a change, "
                f"`git checkout -- {rel}`.")
    if rel in common.SCRIPT_ONLY_FILES or top == common.STATE_DIR:
        return (f"{rel} is written only by the plugin's scripts: record a run with "
                "log-experiment, run one with run-experiment, write the report with summarize. "
                "Reading it is fine.")
    if rel in harness.DEPENDENCY_FILES or re.match(r"requirements.*\.txt$", rel):
        return (f"{rel} declares the dependencies, which are fixed for a session: work with "
                "the packages already installed.")
    return None


def dry_run(flags):
    return any(f in ("-n", "--dry-run") for f in flags)


def out_of_scope(root, cwd, path):
    """An edit of a tracked file that is neither the target nor in the session's scope:
    log-experiment would neither commit nor keep it, so the run would measure code the
    log does not record."""
    import subprocess
    rel = relative(root, cwd, path)
    config = session_config(root)
    inside = candidates.candidate_root(root, rel)
    if inside:
        root, rel = inside
    if rel.startswith("..") or not config or rel in common.editable_files(config) \
            or rel in common.SESSION_FILES:
        return None
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "--", rel], cwd=root,
                             capture_output=True).returncode == 0
    if not tracked:
        return None
    return (f"{rel} is outside this session's scope ({', '.join(common.editable_files(config))}): "
            "a run must measure exactly the code the log records. Put the idea into the target, "
            "or note it in autoresearch.md; a session that edits more files is set up with --scope.")


def check_file_tool(root, cwd, tool, tool_input):
    path = tool_input.get(FILE_TOOLS[tool])
    if not isinstance(path, str) or not path:
        return None
    return protected(root, cwd, path) or out_of_scope(root, cwd, path)


def simple_commands(command):
    """Split a shell command into simple commands (lists of words); quotes respected."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    words, out = [], []
    for token in lexer:
        if token in SEPARATORS or set(token) <= set(";&|"):
            if words:
                out.append(words)
            words = []
        else:
            words.append(token)
    if words:
        out.append(words)
    return out


def check_bash(root, cwd, command):
    try:
        commands = simple_commands(command)
    except ValueError:          # unbalanced quotes: the shell would reject it too
        return None
    for words in commands:
        if words[0] == "cd" and len(words) == 2:     # follow `cd dir && ...`
            cwd = os.path.normpath(os.path.join(cwd, os.path.expanduser(words[1])))
            continue
        for seq in INSTALLERS:
            n = len(seq)
            if any(tuple(words[i:i + n]) == seq for i in range(len(words) - n + 1)):
                return ("installing packages is not allowed during a session: the dependencies "
                        "are fixed, so every run is comparable. Work with what is installed "
                        "(see pyproject.toml); if an idea truly needs a new package, note it in "
                        "autoresearch.md for the person to decide.")
        reason = check_words(root, cwd, words)
        if reason:
            return reason
    return None


def check_words(root, cwd, words):
    # Redirections: `> file`, `>> file`, `2> file`, `&> file`, `>| file`.
    for i, w in enumerate(words[:-1]):
        if set(w) <= set(">&|") and ">" in w:
            reason = protected(root, cwd, words[i + 1])
            if reason:
                return reason
    args = list(words)
    while args and (args[0] in PREFIXES or re.match(r"^[A-Za-z_]\w*=", args[0])):
        args = args[1:]             # VAR=value, sudo, env, ... before the command word
    if not args:
        return None
    cmd, rest = os.path.basename(args[0]), args[1:]
    paths = [w for w in rest if not w.startswith("-")]
    targets = []
    if cmd in WRITERS_ANY:
        targets = paths
    elif cmd in WRITERS_LAST and paths:
        targets = paths[-1:]
    elif cmd in IN_PLACE and any(re.match(r"^-[A-Za-z]*i", w) or w.startswith("--in-place")
                                 for w in rest):
        targets = paths
    elif cmd == "dd":
        targets = [w[3:] for w in rest if w.startswith("of=")]
    elif cmd == "git" and rest:
        sub, flags = rest[0], rest[1:]
        if sub in ("reset", "stash", "clean") and not (sub == "clean" and dry_run(flags)):
            return (f"git {sub} moves the work tree behind the scripts' back, and the branch "
                    "must stay on the last kept commit: log-experiment commits a keep and "
                    "resets a discard or crash by itself, and resume-session restores the "
                    "last kept commit (saving any change under refs/autoresearch/). To undo "
                    "an edit of the target, `git checkout -- <target>`.")
        if sub in ("checkout", "restore") and "--" in flags:
            revs = [f for f in flags[:flags.index("--")] if not f.startswith("-")]
            fixed = [w for w in flags[flags.index("--") + 1:]
                     if is_fixed(root, relative(root, cwd, w))]
            if (revs or any(f.startswith("--source") for f in flags)) and fixed:
                return (f"checking out {fixed[0]} from another commit leaves the branch where "
                        "it is: run resume-session, which restores the last kept commit and "
                        "checks the fixed files.")
        if sub in ("rm", "mv"):
            targets = [w for w in flags if not w.startswith("-")]
    elif re.match(r"^python[\d.]*$", cmd) and "-c" in rest:
        code = " ".join(rest[rest.index("-c") + 1:])
        if PY_WRITE.search(code):
            for token in re.findall(r"[\w./-]+", code):
                reason = protected(root, cwd, token) if "." in token else None
                if reason:
                    return reason
    for t in targets:
        reason = protected(root, cwd, t)
        if reason:
            return reason
    return None


def decide(payload):
    """The deny reason for this tool call, or None to allow it."""
    root = session.active_root(payload)
    if root is None:
        return None
    cwd = payload.get("cwd") or os.getcwd()
    tool, tool_input = payload.get("tool_name"), payload.get("tool_input") or {}
    reason = None
    if tool in FILE_TOOLS:
        reason = check_file_tool(root, cwd, tool, tool_input)
    elif tool == "Bash" and isinstance(tool_input.get("command"), str):
        reason = check_bash(root, cwd, tool_input["command"])
    if reason and not session.owns_loop(root, payload):
        # Someone working on something else while a session is open: say how to close it.
        reason += " " + session.open_elsewhere_note(session_config(root))
    return reason


def main():
    try:
        payload = json.load(sys.stdin)
        reason = decide(payload)
    except Exception as e:  # a broken guard must not wedge the session: allow, and say so
        print(f"autoresearch guard: could not check this tool call ({e}); allowing it",
              file=sys.stderr)
        return 0
    if reason:
        print(json.dumps({"hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": f"autoresearch guard: {reason}",
        }}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
