"""summarize: the report, the ranked keeps, what happened to near misses, the plot."""

import json
import re

from core import common, records as core_records
from plugin_helpers import edit_target, git, ok, run_and_log, script


def test_summarize_writes_report_and_plot_and_keeps_next_steps(project):
    run_and_log(project, "keep", "baseline")
    edit_target(project, VAL_BPB=0.9)
    ok(script(project, "run-experiment"))
    ok(script(project, "log-experiment", "--status", "keep", "--description", "lower lr",
              "--asi", json.dumps({"category": "optimizer", "learned": "the lr was too high"})))
    run_and_log(project, "discard", "wider mlp", VAL_BPB=0.95)
    edit_target(project, MODE="crash")
    script(project, "run-experiment")
    ok(script(project, "log-experiment", "--status", "crash", "--description", "flash attn"))
    ok(script(project, "summarize"))
    md = (project / "autoresearch-summary.md").read_text()
    assert "| baseline | 1.000000 | 1 |" in md and "| best | 0.900000 | 2 |" in md
    assert "Improvement: 0.100000 (10.00%)" in md
    assert re.search(r"Branch `autoresearch/t1`, 20\d\d-\d\d-\d\d \d\d:\d\d", md)   # when it ran
    assert "research config:" in md and "policy     noise-aware" in md
    assert "| 1 | 2 | +0.100000 | 0.900000 |" in md and "| lower lr | the lr was too high |" in md
    assert "| optimizer | 1 | 1 | 0 | 2 |" in md and "| uncategorised | 2 | 0 | 1 | 3, 4 |" in md
    assert "**worse or no better (discarded)**: 1" in md and "run 3: wider mlp" in md
    assert "**crashed**: 1" in md and "run 4 `" in md and "flash attn" in md
    assert (project / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The agent fills the next steps; a later summary keeps them.
    (project / "autoresearch-summary.md").write_text(
        md.split("## Recommended next steps")[0] + "## Recommended next steps\n\n1. Try RoPE base 50k.\n")
    proc = ok(script(project, "summarize"))
    assert "progress.png is up to date" in proc.stdout
    assert "1. Try RoPE base 50k." in (project / "autoresearch-summary.md").read_text()


def load_script(name):
    """The module behind a plugin command (`summarize` runs summarize.py)."""
    import importlib
    return importlib.import_module(name.replace("-", "_"))


def append_runs(project, *runs):
    """Run records exactly as log-experiment writes them, with the fields a rerun leaves."""
    commit = git(project, "rev-parse", "HEAD")
    with common.Lock(str(project)):
        for n, (status, metric, extra) in enumerate(runs, 1):
            core_records.append_record(str(project), {
                "type": "run", "run": n, "commit": commit, "status": status, "metric": metric,
                "metrics": {}, "description": f"change {n}", "timestamp": common.now_iso(), **extra})


def test_summary_says_what_really_happened_to_a_better_but_discarded_run(project):
    append_runs(project,
                ("keep", 1.0, {}),
                ("discard", 0.995, {"samples": [0.99, 1.0], "recommendation": "discard"}),
                ("discard", 0.99, {"samples": [0.99], "recommendation": "rerun"}),
                ("discard", 1.02, {}))
    ok(script(project, "summarize", "--no-plot"))
    md = (project / "autoresearch-summary.md").read_text()
    assert "**better at first, not confirmed on a rerun (discarded)**: 1" in md
    assert "run 2: change 2" in md.split("not confirmed on a rerun (discarded)**")[1].split("**")[0]
    assert "**better once, discarded before the recommended rerun**: 1" in md
    assert "**worse or no better (discarded)**: 1" in md and "run 4: change 4" in md
    assert "The session is still open: /experiment:resume continues it" in md


def test_kept_changes_are_ranked_by_their_means_and_a_re_measure_is_not_a_change(project):
    # Change 2 was kept on a lucky draw (0.90); its re-measure says 0.96 (mean 0.93).
    # Change 4 (mean 0.91) then added 0.02 over 0.93, not 0.01 under the lucky 0.90.
    append_runs(project,
                ("keep", 1.0, {"samples": [1.0, 1.01, 0.99], "target_sha": "a" * 64}),
                ("keep", 0.90, {"samples": [0.90], "target_sha": "b" * 64}),
                ("keep", 0.96, {"samples": [0.96], "target_sha": "b" * 64, "description": "re-measure"}),
                ("keep", 0.91, {"samples": [0.90, 0.92], "target_sha": "c" * 64}))
    ok(script(project, "summarize", "--no-plot"))
    ranked = (project / "autoresearch-summary.md").read_text().split("ranked by gain")[1].split("\n## ")[0]
    assert "| 1 | 2 | +0.100000 | 0.900000 |" in ranked and "| 2 | 4 | +0.020000 | 0.910000 |" in ranked
    assert "re-measure" not in ranked and "| 3 |" not in ranked


def test_progress_plot_has_whole_run_numbers_labelled_keeps_and_marked_near_misses(project, monkeypatch):
    from matplotlib.figure import Figure
    append_runs(project, ("keep", 1.0, {"samples": [1.0, 1.01, 0.99], "target_sha": "a" * 64}),
                ("keep", 0.98, {}),
                ("discard", 0.97, {"samples": [0.97, 0.99], "recommendation": "discard"}),
                ("discard", 1.05, {}), ("keep", 0.96, {}))
    shown = {}
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (shown.setdefault("fig", fig),
                                                                   savefig(fig, *a, **k)))
    summarize = load_script("summarize")
    log = core_records.read_log(str(project))
    summarize.render_plot(str(project), log.config, log.runs, str(project / "p.png"))
    ax = shown["fig"].axes[0]
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 5]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert [t.get_text() for t in ax.texts] == ["change 2", "change 5"]    # kept, after the baseline
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "better, but not kept (see the summary)" in legend
    assert "noise: one run's sigma (0.0115)" in legend     # pooled over the repeats: the band
