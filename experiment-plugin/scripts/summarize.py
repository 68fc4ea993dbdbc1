#!/usr/bin/env python3
"""Write autoresearch-summary.md and progress.png from the session log.

The summary: baseline, best, improvement, best commit and confidence; the kept
changes ranked by what each added; what failed, by category (worse, crash, NaN,
timeout); the crash list; and a "Recommended next steps" section for the agent to
fill. That section is carried over when the summary is written again.

progress.png: the metric of every run, kept runs green and labelled with their
change, better-but-not-kept runs ringed in orange, the running best as a step line,
crashes marked along the bottom. It is redrawn only when the log changed.

--html also writes autoresearch-summary.html: the dashboard's charts and tables as one
self-contained page (Plotly's JavaScript and the data inside it) that opens from disk,
offline.

--test, once the session has ended, first scores the baseline and the final kept state
(--every-keep: every keep) on the dataset's sealed test split, each trained again on as
many fresh seeds as the session's noise calls for (--seeds N to choose), and records
the scores in the log; the summary then shows the val and test gains side by side.
While the session is active it refuses: the loop never sees a test number.
"""
import argparse
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, holdout, project, records, stats, policy, session, report  # noqa: E402

NEXT_STEPS = "## Recommended next steps"
PLACEHOLDER = ("<!-- To be written by the agent: the 3-5 most promising directions, "
               "given what worked and what did not. -->")


def kept_gains(runs, direction):
    """Each kept change with what it added: the mean of its samples against the mean
    of the kept code's samples before it (re-measures included, so a lucky keep does
    not make the next change look worse than it was). A re-measure of the kept code
    is not a change and is not listed; the baseline comes first with gain 0."""
    out, kept_sha, kept = [], None, []
    undone = stats.undone_runs(runs)
    undone_code = {r.get("target_sha") for r in runs if r["run"] in undone} - {None}
    for r in runs:
        samples = stats.run_samples(r)
        if r["status"] != "keep" or not samples or r["run"] in undone \
                or r.get("target_sha") in undone_code:
            continue
        if kept and r.get("target_sha") and r.get("target_sha") == kept_sha:
            kept += samples                                 # a re-measure
            continue
        mean = sum(samples) / len(samples)
        gain = stats.improvement(mean, sum(kept) / len(kept), direction) if kept else 0.0
        out.append((gain, r))
        kept_sha, kept = r.get("target_sha"), list(samples)
    return out


NOT_CONFIRMED = "better at first, not confirmed on a rerun (discarded)"
UNDONE = "kept, then undone: the runs built on it did not bear it out"


def outcomes(runs, direction):
    """What really happened to each run that was not kept, by run number. A discarded
    run that beat the best kept before it is not "worse": say why it went."""
    out, best = {}, None
    undone = stats.undone_runs(runs)
    for r in runs:
        status, metric = r["status"], r.get("metric")
        if r["run"] in undone:
            out[r["run"]] = UNDONE
            continue
        if status == "keep":
            if common.finite(metric) and (best is None or stats.better(metric, best, direction)):
                best = metric
            continue
        if status == "crash":
            out[r["run"]] = {"nan": "NaN or exploding loss", "timeout": "timed out"}.get(
                r.get("run_status"), "crashed")
            continue
        if status == "checks_failed":
            out[r["run"]] = "failed its checks (never kept)"
            continue
        samples = [x for x in (r.get("samples") or [metric]) if common.finite(x)]
        beat = [best is not None and stats.better(x, best, direction) for x in samples]
        advice = r.get("recommendation")
        if not any(beat):
            out[r["run"]] = "worse or no better (discarded)"
        elif advice == "rerun":
            out[r["run"]] = "better once, discarded before the recommended rerun"
        elif not beat[-1] or not stats.better(metric, best, direction):
            out[r["run"]] = NOT_CONFIRMED
        elif advice == "keep":
            out[r["run"]] = "better, discarded against the keep recommendation"
        else:
            out[r["run"]] = "better, but not by enough for the keep policy (discarded)"
    return out


def previous_next_steps(path):
    """The filled-in next-steps section of an earlier summary, if any."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    if NEXT_STEPS not in text:
        return None
    body = text.split(NEXT_STEPS, 1)[1].strip()
    return body if body and body != PLACEHOLDER else None


def span(runs):
    """'2026-03-05 22:01 to 2026-03-06 06:14 UTC (8.2 h)', from the runs' timestamps."""
    times = [t for t in (common.when(r) for r in runs) if t]
    if not times:
        return "no runs yet"
    first, last = min(times), max(times)
    seconds = (last - first).total_seconds()
    took = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
    return (f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC ({took})"
            if last > first else f"{first:%Y-%m-%d %H:%M} UTC")


def by_category(runs):
    """How each kind of idea fared (the category the agent gave in --asi)."""
    groups, undone = {}, stats.undone_runs(runs)
    for r in runs[1:]:                       # the baseline tried no idea
        if r.get("reverts"):
            continue
        groups.setdefault(str(records.asi(r).get("category") or "uncategorised"), []).append(r)
    if not groups:
        return ["No ideas tried yet."]
    rows = ["| category | tried | kept | crashed | runs |", "|---|---|---|---|---|"]
    for c, group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        rows.append(f"| {cell(c)} | {len(group)} | {sum(r['status'] == 'keep' and r['run'] not in undone for r in group)} | "
                    f"{sum(r['status'] == 'crash' for r in group)} | "
                    f"{', '.join(str(r['run']) for r in group)} |")
    return rows


def cell(text):
    return one_line(text).replace("|", "/")


def one_line(text, n=90):
    s = " ".join(text.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def session_state(root, events):
    """One sentence: how the session ended, or that it is still open."""
    ends = [e for e in events if e["event"] == "end"]
    if session.read_state(root).get("active") or not ends:
        return ("The session is still open: /experiment:resume continues it, /experiment:end "
                "closes it.")
    return f"The session ended {ends[-1]['timestamp']}: {ends[-1].get('reason', 'ended')}."


def render_markdown(config, runs, warnings, next_steps, state="", events=()):
    name, direction = config["metric"], config["direction"]
    c = stats.confidence(runs, direction)
    noise = stats.noise_line(runs, digits=6)
    estimate = policy.estimate_line(config, runs)
    base, best = c["baseline"], c["best"]
    undone = stats.undone_runs(runs)
    counts = {s: sum(r["status"] == s for r in runs) for s in ("keep", "discard", "crash")}
    counts["discard"] += sum(r["status"] == "checks_failed" for r in runs)
    counts["keep"] = len(stats.standing_keeps(runs))
    undone_text = f" ({len(undone)} more kept, then undone)" if undone else ""
    out = [f"# autoresearch summary: {config['tag']}", "",
           f"Branch `{config['branch']}`, {span(runs)}. {stats.experiments(runs)} runs: "
           f"{counts['keep']} kept{undone_text}, "
           f"{counts['discard']} discarded, {counts['crash']} crashed. {state}".rstrip(), "",
           "```", session.research_config(config), "```", "", "## Result", ""]
    if base and best:
        gain = c["improvement"]
        pct = 100 * gain / abs(base["metric"]) if base["metric"] else 0.0
        ratio = c["confidence"]
        shown = "n/a" if ratio is None else ("inf" if ratio == float("inf") else f"{ratio:.1f}x")
        out += [f"| | {name} | run | commit |", "|---|---|---|---|",
                f"| baseline | {common.fmt(base['metric'])} | {base['run']} | `{base['commit'][:7]}` |",
                f"| best | {common.fmt(best['metric'])} | {best['run']} | `{best['commit'][:7]}` |", "",
                f"Improvement: {common.fmt(gain)} ({pct:.2f}%), {direction} is better. Noise floor "
                f"(MAD): {common.fmt(c['noise_floor']) if c['noise_floor'] is not None else 'n/a'}; "
                f"confidence {shown}: {c['verdict']}. {noise[0].upper() + noise[1:]}.", "",
                *([estimate[0].upper() + estimate[1:] + ".", ""] if estimate else []),
                f"Best code: `git show {best['commit'][:7]}` (on branch `{config['branch']}`).", ""]
    else:
        out += ["No measured run yet.", ""]
    out += ["## On the sealed test split", ""]
    scored, why = holdout.lines(config, runs, list(events)), holdout.why_not(config)
    if scored:
        out += scored + [""]
        if frontier_rows(config, runs, events):
            out += [f"![val and test, state by state]({common.TEST_PLOT})", ""]
    elif why:
        out += [f"Not scored: {why}.", ""]
    else:
        out += ["Not scored yet: once the session has ended, `summarize --test` (or finalize) trains the "
                "baseline and the final state again and scores them on text no run has seen.", ""]
    gains = sorted(kept_gains(runs, direction)[1:], key=lambda g: -g[0])
    out += ["## Kept changes, ranked by gain", ""]
    if gains:
        out += [f"| rank | run | gain | {name} | commit | change | lesson |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {i} | {r['run']} | {g:+.6f} | {common.fmt(r['metric'])} | `{r['commit'][:7]}` | "
                f"{cell(r['description'])} | {cell(records.lesson(r))} |"
                for i, (g, r) in enumerate(gains, 1)]
    else:
        out.append("None beyond the baseline.")
    out += ["", "## Ideas by category", ""] + by_category(runs)
    out += ["", "## What did not work, and why", ""]
    failed = [r for r in runs if (r["status"] != "keep" or r["run"] in undone)]
    category = outcomes(runs, direction)
    if not failed:
        out.append("Nothing failed.")
    for label in sorted(set(category.values())):
        group = [r for r in failed if category[r["run"]] == label]
        out.append(f"- **{label}**: {len(group)}")
        out += [f"  - run {r['run']}: {one_line(r['description'])}"
                + (f" ({name} {common.fmt(r['metric'])})" if common.finite(r.get("metric")) else "")
                for r in group]
    crashes = [r for r in runs if r["status"] == "crash"]
    out += ["", "## Crashes", ""]
    out += ([f"- run {r['run']} `{r['commit'][:7]}` {r.get('run_status', 'crash')}: "
             f"{one_line(r['description'])}"
             + (f" (invalid: {one_line(r['invalid'])})" if r.get("invalid") else "")
             for r in crashes] or ["None."])
    overrides = [r for r in runs if r.get("override")]
    if overrides:
        out += ["", "## Kept against the recommendation", ""]
        out += [f"- run {r['run']} `{r['commit'][:7]}`: recommended {r['override']['recommendation']}; "
                f"kept because: {one_line(r['override']['reason'])}" for r in overrides]
    if warnings:
        out += ["", "## Log warnings", ""] + [f"- {w}" for w in warnings]
    out += ["", NEXT_STEPS, "", next_steps or PLACEHOLDER, ""]
    return "\n".join(out)


def render_plot(root, config, runs, path):
    # Only this script needs matplotlib; the Agg canvas avoids pyplot's GUI machinery.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    direction = config["direction"]
    fig = Figure(figsize=(11, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    undone = stats.undone_runs(runs)
    done = [r for r in runs if common.finite(r.get("metric")) and not r.get("reverts")]
    category = outcomes(runs, direction)
    worse = [r for r in done if r["status"] != "keep" and category[r["run"]].startswith("worse")]
    better = [r for r in done if r["status"] != "keep" and r not in worse]
    standing = {r["run"] for r in stats.standing_keeps(runs)}
    kept = [r for r in done if r["run"] in standing]
    dropped = [r for r in done if r["run"] in undone]
    ax.scatter([r["run"] for r in worse], [r["metric"] for r in worse], s=14, c="0.65",
               label="discarded")
    if better:   # below the running best but not kept: an unconfirmed or traded-off gain
        ax.scatter([r["run"] for r in better], [r["metric"] for r in better], s=30,
                   facecolors="none", edgecolors="tab:orange", zorder=3,
                   label="better, but not kept (see the summary)")
    ax.scatter([r["run"] for r in kept], [r["metric"] for r in kept], s=36, c="tab:green",
               edgecolors="black", zorder=4, label="kept")
    if dropped:  # kept on its first runs, undone when the runs built on it said otherwise
        ax.scatter([r["run"] for r in dropped], [r["metric"] for r in dropped], s=36,
                   facecolors="none", edgecolors="tab:green", zorder=4, label="kept, then undone")
    xs, ys, best = [], [], None
    for r in kept:
        if best is None or stats.better(r["metric"], best, direction):
            best = r["metric"]
        xs.append(r["run"])
        ys.append(best)
    if xs:
        last = max(r["run"] for r in runs)
        ax.step(xs + [last], ys + [ys[-1]], where="post", c="tab:green", label="running best")
        sigma, _ = stats.noise(runs)
        if sigma:       # one run's noise around the frontier: what a single run cannot tell apart
            lo, hi = [y - sigma for y in ys + [ys[-1]]], [y + sigma for y in ys + [ys[-1]]]
            ax.fill_between(xs + [last], lo, hi, step="post", color="tab:green", alpha=0.12,
                            label=f"noise: one run's sigma ({sigma:.4f})")
    for r in kept[1:]:      # what each kept change was, beside its point
        ax.annotate(one_line(r["description"], 40), (r["run"], r["metric"]), xytext=(4, 4),
                    textcoords="offset points", fontsize=7, rotation=25, color="0.2")
    crashed = [r["run"] for r in runs if r["status"] == "crash"]
    if crashed:
        ax.plot(crashed, [0] * len(crashed), "x", c="tab:red", transform=ax.get_xaxis_transform(),
                clip_on=False, label="crash")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("run")
    ax.set_ylabel(f"{config['metric']} ({direction} is better)")
    ax.set_title(f"autoresearch {config['tag']}: {stats.experiments(runs)} runs, {len(kept)} kept"
                 + (f" ({len(dropped)} more undone)" if dropped else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    tmp = common.temp_path(path, ".png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def frontier_rows(config, runs, events):
    """(run, val, test) of every scored state, when more than the two ends were scored."""
    rows = (holdout.table(config, runs, list(events)) or {}).get("rows", [])
    return rows if len(rows) > 2 else []


def render_frontiers(config, rows, path):
    """The two frontiers: each scored state's val and test metric, run by run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [r["run"] for r in rows]
    if all(r["val"] is not None for r in rows):
        ax.plot(xs, [r["val"] for r in rows], "o-", c="tab:green", label="val (re-run, same seeds)")
    ax.plot(xs, [r["test"] for r in rows], "s--", c="tab:purple", label="test (sealed)")
    ax.set_xlabel("run of the kept state")
    ax.set_ylabel(f"{config['metric']} ({config['direction']} is better)")
    ax.set_title("kept states on validation and on the sealed test split", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = common.temp_path(path, ".png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(prog="summarize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-plot", action="store_true", help="write only the markdown")
    p.add_argument("--html", action="store_true",
                   help=f"also write {common.HTML_SUMMARY}, one page that opens offline")
    p.add_argument("--test", action="store_true",
                   help="after the session: score the baseline and the final state on the sealed test split")
    p.add_argument("--every-keep", action="store_true", help="with --test: score every kept state")
    p.add_argument("--seeds", type=int, help="with --test: seeds a state (default: as the session's noise calls for)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.seeds is not None and not 1 <= a.seeds <= 20:
        raise common.UserError(f"--seeds {a.seeds}: give 1 to 20")
    root = common.find_root()
    common.use_project_python(root, common.PLOT_NEEDS)
    root, log = records.load_session(root)
    if a.test:
        holdout.score(root, log, every_keep=a.every_keep, seeds=a.seeds)
        root, log = records.load_session(root)
    config, runs = log.config, log.runs
    summary_path = os.path.join(root, common.SUMMARY)
    text = render_markdown(config, runs, log.warnings, previous_next_steps(summary_path),
                           session_state(root, log.events), log.events)
    common.write_atomic(summary_path, text)
    print(f"wrote {common.SUMMARY} ({stats.experiments(runs)} runs)")
    if not a.no_plot:
        with open(os.path.join(root, common.LOG), "rb") as f:
            key = hashlib.sha256(f.read()).hexdigest()
        plot = project.plot_of(config)      # progress.png, unless the project tracks one
        plot_path = os.path.join(root, plot)
        key_path = os.path.join(root, common.STATE_DIR, "plot.key")
        if os.path.exists(plot_path) and common.read_json(key_path, default=None) == key:
            print(f"{plot} is up to date")
        else:
            render_plot(root, config, runs, plot_path)
            common.write_atomic(key_path, f'"{key}"\n')
            print(f"wrote {plot}")
        rows = frontier_rows(config, runs, log.events)
        if rows:
            render_frontiers(config, rows, os.path.join(root, common.TEST_PLOT))
            print(f"wrote {common.TEST_PLOT}")
    if a.html:
        view = report.view(root, log)
        view["version"] = report.signature(root)
        view["test"] = holdout.table(config, runs, log.events)
        page = report.page(f"autoresearch {config['tag']}", report.plotly_js(), view)
        common.write_atomic(os.path.join(root, common.HTML_SUMMARY), page)
        print(f"wrote {common.HTML_SUMMARY}")
    return 0


if __name__ == "__main__":
    common.run_main(main)
