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
import fnmatch
import glob
import json
import os
import re
import shlex
import sys

sys.dont_write_bytecode = True  # nothing is written into the plugin's folder
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


# What a session's tools must never write, besides the harness and the session files:
# the plugin itself (its hooks are this guard), Claude Code's settings (they load the
# hooks), and git's own store (the session's refs and the log's copy live there).
GUARDS = {"experiment-plugin": "the plugin (its scripts and hooks, this guard included)",
          ".claude": "Claude Code's settings, which load this guard",
          ".git": "git's own store (the session's branch, refs and the log's copy)"}
GLOB = re.compile(r"[*?[]")


def outside_guards(path):
    """Why an absolute path outside the project may not be written, or None: the plugin's
    own folder wherever it is installed, and the user's Claude Code settings."""
    real = os.path.realpath(path)
    for folder, what in ((common.PLUGIN_ROOT, GUARDS["experiment-plugin"]),
                         (os.path.expanduser("~/.claude"), GUARDS[".claude"])):
        folder = os.path.realpath(folder)
        if real == folder or real.startswith(folder + os.sep):
            return what
    return None


def protected(root, cwd, path):
    """Why `path` may not be written, or None if it may. A glob is judged by every
    name it matches, here and among the names it protects."""
    if GLOB.search(path):
        for match in glob.glob(os.path.join(cwd, os.path.expanduser(path))) + named_by(path):
            reason = protected(root, cwd, match)
            if reason:
                return reason
        return None
    rel = relative(root, cwd, path)
    if rel.startswith(".."):
        what = outside_guards(os.path.join(cwd, os.path.expanduser(path)))
        return (f"{path} is {what}: it cannot change during a session." if what else None)
    if rel.split(os.sep)[0] in GUARDS:
        return (f"{rel} is {GUARDS[rel.split(os.sep)[0]]}: it cannot change during a session. "
                "The loop changes only the session's target; git moves only through the scripts.")
    what = outside_guards(os.path.join(root, rel))
    if what:
        return f"{rel} is {what}: it cannot change during a session."
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


# The protected files and folders by name: what a glob is matched against.
PROTECTED_PATHS = (*harness.FIXED_FILES, *harness.FIXED_DIRS, *common.SESSION_FILES, *GUARDS)


def protected_names(root):
    """The names this guard protects, as they appear in a command."""
    config = session_config(root)
    return (*PROTECTED_PATHS, *harness.DEPENDENCY_FILES, *(config.get("read_only") or []))


def named_by(pattern):
    """The protected names a glob matches (the file may be gone already)."""
    base = os.path.basename(pattern.rstrip("/"))
    return [n for n in PROTECTED_PATHS if fnmatch.fnmatchcase(n, base)]


def mentioned(root, text):
    """A protected name `text` mentions once quotes, backslashes and string joins
    ('auto' + 'research.jsonl') are taken out, or None."""
    flat = re.sub(r"""['"]\s*\+\s*['"]|['"\\]""", "", text)
    for name in protected_names(root):
        if name in flat:
            return name
    for word in re.findall(r"[\w.*?\[\]/-]+", flat):
        matches = named_by(word) if GLOB.search(word) else []
        if matches:
            return matches[0]
    return None


def strip_comments(command):
    """The command without its shell comments: `#` at the start of a word, outside
    quotes, to the end of the line (shlex would take `# don't` for an open quote)."""
    out, quote, i = [], None, 0
    while i < len(command):
        c = command[i]
        if quote:
            if c == "\\" and quote == '"' and i + 1 < len(command):
                out.append(command[i:i + 2])
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "\\" and i + 1 < len(command):
            out.append(command[i:i + 2])
            i += 2
            continue
        elif c == "#" and (i == 0 or command[i - 1] in " \t\n;&|()"):
            end = command.find("\n", i)
            i = len(command) if end < 0 else end
            continue
        out.append(c)
        i += 1
    return "".join(out)


def expand_braces(word):
    """`x{,.bak}` -> x, x.bak (one level, as the shell does for the common case)."""
    m = re.match(r"^(.*?)\{([^{}]*,[^{}]*)\}(.*)$", word)
    if not m:
        return [word]
    return [m.group(1) + part + m.group(3) for part in m.group(2).split(",")]


def substitute(words, variables):
    """$NAME and ${NAME} replaced by values assigned earlier in the same command."""
    def one(w):
        return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: variables.get(m.group(1), m.group(0)), w)
    return [x for w in words for x in expand_braces(one(w))]


def check_bash(root, cwd, command, depth=0):
    try:
        commands = simple_commands(strip_comments(command))
    except ValueError:
        # The shell may read it otherwise (or reject it), but fail closed on what this
        # guard protects: judge it again with the quotes taken out, and deny a command
        # that names a protected file.
        unquoted = re.sub(r"['\"]", " ", command)
        reason = check_bash(root, cwd, unquoted, depth + 1) if depth < 5 else None
        name = mentioned(root, command)
        if reason or name:
            return ("this command could not be parsed (an unbalanced quote?) and " +
                    (f"it names {name}, which the guard protects" if name else
                     f"read without its quotes it is refused: {reason}") + ". Write it so it parses.")
        return None
    variables = {}
    for words in commands:
        if all(re.match(r"^[A-Za-z_]\w*=", w) for w in words):      # NAME=value on its own
            variables.update(w.split("=", 1) for w in words)
            continue
        words = substitute(words, variables)
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
        reason = check_words(root, cwd, words, command, depth)
        if reason:
            return reason
    return None


SHELLS = {"bash", "sh", "zsh", "dash", "ksh"}
GIT_OPTIONS_WITH_VALUE = {"-C", "-c", "--git-dir", "--work-tree", "--namespace", "--exec-path"}
GIT_MOVES = ("git {sub} moves the work tree behind the scripts' back, and the branch "
             "must stay on the last kept commit: log-experiment commits a keep and "
             "resets a discard or crash by itself, and resume-session restores the "
             "last kept commit (saving any change under refs/autoresearch/). To undo "
             "an edit of the target, `git checkout -- <target>`.")
GIT_REFS = ("git {sub} here could delete or move the session's records (its branch, the "
            "refs/autoresearch/ refs that keep every tried commit and the log's copy): the "
            "scripts own them. Read them freely (git log, git show, git for-each-ref).")


def strip_prefixes(args):
    """The command word and its arguments, past VAR=value, sudo, env, nice, timeout, ..."""
    while args:
        w = os.path.basename(args[0])
        if re.match(r"^[A-Za-z_]\w*=", args[0]) or w in PREFIXES:
            args = args[1:]
            while args and args[0].startswith("-") and w != "xargs":
                args = args[1:]
        elif w in ("timeout", "nice", "ionice", "stdbuf", "setsid", "chrt", "taskset", "flock"):
            args = args[1:]
            while args and args[0].startswith("-"):
                flag, args = args[0], args[1:]
                if flag in ("-n", "-s", "-k", "-c", "-p", "-o", "-e", "-i") and args:
                    args = args[1:]
            if w in ("timeout", "chrt", "taskset", "flock") and args:
                args = args[1:]              # the duration, priority, mask or lock file
        else:
            break
    return args


def check_git(root, cwd, rest):
    """A deny reason for a git command (global options such as -C and -c skipped)."""
    while rest and rest[0].startswith("-"):
        opt, rest = rest[0], rest[1:]
        if opt == "-C" and rest:
            cwd = os.path.normpath(os.path.join(cwd, os.path.expanduser(rest[0])))
        if opt in GIT_OPTIONS_WITH_VALUE and rest:
            rest = rest[1:]
    if not rest:
        return None, cwd, []
    sub, flags = rest[0], rest[1:]
    if sub in ("reset", "stash", "clean") and not (sub == "clean" and dry_run(flags)):
        return GIT_MOVES.format(sub=sub), cwd, []
    deleting = {"-d", "-D", "--delete", "-m", "-M", "--move", "-f", "--force"}
    if (sub == "update-ref" or sub == "filter-branch" or sub == "filter-repo"
            or (sub == "branch" and deleting & set(flags))
            or (sub == "push" and ({"-d", "--delete", "-f", "--force", "--mirror", "--prune"} & set(flags)
                                   or any(f.startswith((":", "+")) for f in flags)))
            or (sub == "reflog" and flags[:1] in (["expire"], ["delete"]))
            or (sub == "gc" and any(f.startswith("--prune") for f in flags))
            or (sub == "worktree" and flags[:1] in (["remove"], ["prune"]))
            or (sub == "tag" and "-d" in flags)):
        return GIT_REFS.format(sub=sub), cwd, []
    if sub in ("checkout", "restore") and "--" in flags:
        revs = [f for f in flags[:flags.index("--")] if not f.startswith("-")]
        fixed = [w for w in flags[flags.index("--") + 1:] if is_fixed(root, relative(root, cwd, w))]
        if (revs or any(f.startswith("--source") for f in flags)) and fixed:
            return (f"checking out {fixed[0]} from another commit leaves the branch where "
                    "it is: run resume-session, which restores the last kept commit and "
                    "checks the fixed files."), cwd, []
    if sub in ("rm", "mv"):
        return None, cwd, [w for w in flags if not w.startswith("-")]
    return None, cwd, []


def check_find(root, cwd, rest):
    """find ... -delete / -exec: its start folders, and what its -name tests match."""
    if not {"-delete", "-exec", "-execdir", "-ok", "-okdir"} & set(rest):
        return None
    starts = []
    for w in rest:
        if w.startswith("-") or w in ("(", "!", ")"):
            break
        starts.append(w)
    patterns = [rest[i + 1] for i, w in enumerate(rest[:-1])
                if w in ("-name", "-iname", "-path", "-ipath", "-wholename")]
    for start in starts or ["."]:
        reason = protected(root, cwd, start)
        if reason:
            return reason
        folder = os.path.realpath(os.path.join(cwd, os.path.expanduser(start)))
        if not patterns and (os.path.realpath(root) + os.sep).startswith(folder.rstrip(os.sep) + os.sep):
            return ("find with -delete or -exec over the whole project would reach the session's "
                    "files: name what to delete (-name ...) or run it in a folder of your own.")
    for pattern in patterns:
        for name in named_by(pattern):
            return protected(root, root, name)
    return None


def check_words(root, cwd, words, command, depth):
    # Redirections: `> file`, `>> file`, `2> file`, `&> file`, `>| file`.
    for i, w in enumerate(words[:-1]):
        if set(w) <= set(">&|") and ">" in w:
            reason = protected(root, cwd, words[i + 1])
            if reason:
                return reason
    args = strip_prefixes(list(words))
    if not args:
        return None
    cmd, rest = os.path.basename(args[0]), args[1:]
    if (cmd in SHELLS and "-c" in rest) or cmd == "eval":
        inner = rest[rest.index("-c") + 1] if cmd in SHELLS and rest.index("-c") + 1 < len(rest) else " ".join(rest)
        return check_bash(root, cwd, inner, depth + 1) if depth < 5 else None
    if "xargs" in words[:len(words) - len(args)] and (cmd in WRITERS_ANY or cmd in WRITERS_LAST):
        name = mentioned(root, command)     # what xargs feeds it comes from elsewhere in the line
        if name:
            return protected(root, root, name) or f"xargs {cmd} here may reach {name}, which the guard protects."
    if cmd == "find":
        return check_find(root, cwd, rest)
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
    elif cmd in ("sort", "shuf") and ("-o" in rest or any(w.startswith("--output") for w in rest)):
        targets = [rest[i + 1] for i, w in enumerate(rest[:-1]) if w == "-o"]
        targets += [w.split("=", 1)[1] for w in rest if w.startswith("--output=")]
    elif cmd == "git" and rest:
        reason, cwd, targets = check_git(root, cwd, rest)
        if reason:
            return reason
    elif re.match(r"^python[\d.]*$", cmd):
        # Inline code (-c, or a here-document on stdin): a write call and a protected
        # name anywhere in it, however the name is spelled in pieces.
        code = " ".join(rest[rest.index("-c") + 1:]) if "-c" in rest else command
        if ("-c" in rest or "<<" in command or "-" in rest) and PY_WRITE.search(code):
            name = mentioned(root, code)
            if name:
                return (protected(root, cwd, name)
                        or f"this Python code writes files and names {name}, which the guard protects.")
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


def failed_closed(payload, error):
    if not isinstance(payload, dict):
        return None
    text = json.dumps(payload.get("tool_input") or {})
    try:
        root = session.active_root(payload) or common.find_root(payload.get("cwd") or os.getcwd())
        name = mentioned(root, text)
    except Exception:
        name = next((n for n in PROTECTED_PATHS if n in text), None)
    return (f"this tool call could not be checked ({error}) and it names {name}, which the "
            "guard protects: nothing was done." if name else None)


def main():
    try:
        payload = json.load(sys.stdin)
        reason = decide(payload)
    except Exception as e:
        # A broken guard must not wedge the session, nor open what it protects: a call
        # that names a protected file is denied, anything else allowed, both said.
        reason = failed_closed(payload if "payload" in locals() else None, e)
        if not reason:
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
