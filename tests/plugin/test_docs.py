"""The instructions match the code: every script a command, the skill, its references,
program.md or the README tells the agent to call exists, and every flag written next
to it is one the script accepts. The manifest and command files have what Claude Code
reads from them."""

import json
import re
import subprocess
import sys

import pytest

from plugin_helpers import PLUGIN, REPO, SCRIPTS


DOCS = sorted([*PLUGIN.glob("commands/*.md"), *PLUGIN.glob("skills/**/*.md"),
               PLUGIN / "README.md", REPO / "program.md", REPO / "CLAUDE.md"])
CALL = re.compile(r"scripts/([a-z][a-z-]+)[\"`]?((?:[ \t]+(?:--[a-z-]+|[^\s`|]+))*)")


def script_calls():
    calls = []
    for doc in DOCS:
        for m in CALL.finditer(doc.read_text()):
            flags = re.findall(r"(?<![\w-])--[a-z][a-z-]*", m.group(2))
            calls.append((doc.relative_to(REPO).as_posix(), m.group(1), tuple(flags)))
    return calls


HELP = {}


def help_text(name):
    if name not in HELP:
        HELP[name] = subprocess.run([sys.executable, str(SCRIPTS / name), "--help"],
                                    capture_output=True, text=True, timeout=30).stdout
    return HELP[name]


def test_the_docs_call_scripts_at_all():
    named = {name for _, name, _ in script_calls()}
    assert {"setup-session", "run-experiment", "log-experiment", "resume-session",
            "summarize", "confidence"} <= named


@pytest.mark.parametrize("doc,name,flags", script_calls())
def test_documented_script_calls_exist_with_their_flags(doc, name, flags):
    assert (SCRIPTS / name).is_file(), f"{doc} calls scripts/{name}, which does not exist"
    usage = help_text(name)
    for flag in flags:
        assert flag in usage, f"{doc}: scripts/{name} has no {flag}"


def test_the_scripts_table_lists_every_flag_of_every_script():
    table = (PLUGIN / "skills" / "autoresearch" / "references" / "scripts.md").read_text()
    for path in SCRIPTS.iterdir():
        if path.is_dir() or path.name.endswith(".py") or path.name.startswith(("_", ".")):
            continue
        assert f"`{path.name}" in table, f"{path.name} missing from references/scripts.md"
        row = next(l for l in table.splitlines() if l.startswith(f"| `{path.name}"))
        flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)", help_text(path.name), re.M)) - {"--help"}
        if path.name == "setup-session":        # the option parser above really reads --help
            assert {"--tag", "--dataset", "--policy", "--max-iterations"} <= flags
        for flag in flags:
            assert flag in row, f"references/scripts.md does not document {path.name} {flag}"


def test_manifest_and_command_frontmatter():
    manifest = json.loads((PLUGIN / ".claude-plugin" / "plugin.json").read_text())
    assert manifest["name"] == "experiment"
    assert {"version", "description", "author", "license"} <= set(manifest)
    for name in ("model", "resume", "summary", "dashboard"):
        text = (PLUGIN / "commands" / f"{name}.md").read_text()
        front = text.split("---")[1]
        assert re.search(r'^description: \S', front, re.M)
        assert re.search(r'^argument-hint: ".+"$', front, re.M), f"{name}: argument-hint not quoted"
    model = (PLUGIN / "commands" / "model.md").read_text()
    assert "$0" in model and "$ARGUMENTS" in model
    skill = (PLUGIN / "skills" / "autoresearch" / "SKILL.md").read_text()
    assert skill.startswith("---\nname: autoresearch\ndescription: ")
    for link in re.findall(r"\]\((references/[^)]+)\)", skill):
        assert (PLUGIN / "skills" / "autoresearch" / link).is_file(), link


NOT_SCRIPT_FLAGS = {"--plugin-dir", "--permission-mode", "--dangerously-skip-permissions",
                    "--option", "--all", "--help"}


def test_every_flag_in_the_instructions_belongs_to_a_script():
    known = set()
    for path in SCRIPTS.iterdir():
        if not path.name.endswith(".py") and not path.name.startswith((".", "_")):
            known |= set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)", help_text(path.name), re.M))
    bench = subprocess.run([sys.executable, str(REPO / "bench.py"), "--help"], capture_output=True,
                           text=True, timeout=60).stdout       # the docs name bench.py's too
    known |= set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)", bench, re.M))
    for doc in DOCS:
        for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", doc.read_text())) - NOT_SCRIPT_FLAGS:
            assert flag in known, f"{doc.name} mentions {flag}, which no script accepts"
