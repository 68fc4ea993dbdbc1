"""The session as a page: what the live dashboard and the HTML report show (the
header, every run, the progress chart, the latest progress report, the wave lanes),
the chart as a Plotly figure, and the page that draws them.

Reading only: the log and the files beside it, never git, never the lock. Every
string from the log is agent-written text: the page sets it as text (textContent),
and the chart's hover text is HTML-escaped here.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import time

from .common import finite, LOG, NOTES, RUN_LOG, STATE_DIR, when
from .records import asi, lesson, pending_path, read_log
from .stats import (baseline_run, better, confidence, experiments, noise, noise_line,
    run_samples, standing_keeps, undone_runs)
from .policy import estimate_line, kept_estimate
from .project import budget_text
from .candidates import candidates, IN_FLIGHT, WAVE_DIR
from .session import PROGRESS_BEGIN, PROGRESS_END, read_state, research_config

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report_page.html")
POLL_SECONDS = 2


# ------------------------------------------------------------------ what is watched

def watched(root: str) -> list[str]:
    """The files the page is drawn from: when none of them changed, neither did it."""
    paths = [os.path.join(root, n) for n in (LOG, NOTES, RUN_LOG)]
    paths += [os.path.join(root, STATE_DIR, "running.json"), pending_path(root),
              os.path.join(root, STATE_DIR, "state.json")]
    folder = os.path.join(root, WAVE_DIR)
    try:
        paths += sorted(os.path.join(folder, n) for n in os.listdir(folder))
    except OSError:
        pass
    return paths


def signature(root: str) -> str:
    """Size and change time of every watched file: a few stat calls, no reading."""
    parts = []
    for path in watched(root):
        try:
            st = os.stat(path)
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


# ------------------------------------------------------------------------- the runs

def outcome(r: dict, standing: set, undone: set, kept_sha) -> str:
    """What became of a run, in one word the page colours by. A keep of the code kept
    already is a re-measure, not a change."""
    if r["run"] in undone:
        return "undone"
    if r.get("reverts"):
        return "revert"
    if r["status"] == "keep":
        same = kept_sha is not None and r.get("target_sha") == kept_sha
        return "kept" if r["run"] in standing and not same else "re-measure"
    return {"crash": "crash", "checks_failed": "checks failed"}.get(r["status"], "discarded")


def run_rows(runs: list[dict]) -> list[dict]:
    standing = {r["run"] for r in standing_keeps(runs)}
    undone = undone_runs(runs)
    rows, kept_sha = [], None
    for r in runs:
        notes, t = asi(r), when(r)
        shown = outcome(r, standing, undone, kept_sha)
        if r["run"] in standing:
            kept_sha = r.get("target_sha")
        metrics = r.get("metrics") or {}
        rows.append({
            "run": r["run"], "status": r["status"], "outcome": shown,
            "metric": r["metric"] if finite(r.get("metric")) else None,
            "description": str(r.get("description", "")),
            "category": str(notes.get("category") or "uncategorised"),
            "hypothesis": str(notes.get("hypothesis") or ""), "lesson": lesson(r),
            "seeds": r.get("seeds") or [], "samples": run_samples(r),
            "commit": str(r.get("commit", ""))[:7], "time": t.timestamp() if t else None,
            "seconds": r.get("seconds") if finite(r.get("seconds")) else None,
            "tok_sec": metrics.get("avg_tok_sec") if finite(metrics.get("avg_tok_sec")) else None,
            "run_status": str(r.get("run_status") or ""),
            "recommendation": str(r.get("recommendation") or ""),
            "disturbed": [str(d.get("why", "")) for d in r.get("disturbed") or []
                          if isinstance(d, dict)],
            "candidate": str(r.get("candidate") or ""),
        })
    return rows


# ------------------------------------------------------------------------ the chart

COLOURS = {"kept": "#2e9d5b", "discarded": "#9aa3ad", "undone": "#2e9d5b", "re-measure": "#2e9d5b",
           "crash": "#d64545", "checks failed": "#c27c0e", "disturbed": "#e8871e",
           "frontier": "#1f7a45", "band": "rgba(46,157,91,0.13)", "estimate": "#3b6fd4"}


def wrap(text: str, width: int = 72) -> str:
    """Escaped, and broken into lines for a hover box."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return "<br>".join(html.escape(l) for l in lines[:6])


def hover(row: dict, metric: str) -> str:
    value = f"{metric} {row['metric']:.6f}" if row["metric"] is not None else row["run_status"] or "no metric"
    parts = [f"<b>run {row['run']}</b> · {html.escape(row['outcome'])} · {html.escape(value)}",
             wrap(row["description"])]
    if row["hypothesis"]:
        parts.append("<i>hypothesis:</i> " + wrap(row["hypothesis"]))
    if row["lesson"] and row["lesson"] != row["hypothesis"]:
        parts.append("<i>lesson:</i> " + wrap(row["lesson"]))
    seeds = ", ".join(str(s) for s in row["seeds"])
    parts.append(html.escape(f"seed {seeds or '-'} · commit {row['commit'] or '-'}"
                             + (f" · {row['category']}" if row["category"] != "uncategorised" else "")))
    if row["disturbed"]:
        parts.append(html.escape("disturbed: " + "; ".join(row["disturbed"]))[:200])
    return "<br>".join(parts)


def frontier(config: dict, runs: list[dict]) -> tuple[list, list]:
    """The running best of the keeps that stand, as a step line to the last run."""
    xs, ys, best = [], [], None
    for r in standing_keeps(runs):
        if finite(r.get("metric")) and (best is None or better(r["metric"], best, config["direction"])):
            best = r["metric"]
            xs.append(r["run"])
            ys.append(best)
    if xs and runs:         # on to just past the last run: the level the next run must beat
        xs.append(max(xs[-1], runs[-1]["run"]) + 0.4)
        ys.append(ys[-1])
    return xs, ys


def figure(config: dict, runs: list[dict], rows: list[dict]) -> dict:
    """The progress chart as Plotly JSON: every run, the kept frontier with one run's
    noise around it, the kept state's estimate, crashes and disturbed runs marked."""
    import plotly.graph_objects as go

    metric = config["metric"]
    fig = go.Figure()
    xs, ys = frontier(config, runs)
    sigma, _ = noise(runs)
    if xs and sigma:
        fig.add_scatter(x=xs, y=[y + sigma for y in ys], mode="lines", line_shape="hv",
                        line_width=0, hoverinfo="skip", showlegend=False)
        fig.add_scatter(x=xs, y=[y - sigma for y in ys], mode="lines", line_shape="hv",
                        line_width=0, fill="tonexty", fillcolor=COLOURS["band"], hoverinfo="skip",
                        name=f"noise: one run's sigma ({sigma:.4f})")
    if xs:
        fig.add_scatter(x=xs, y=ys, mode="lines", line_shape="hv", name="kept frontier",
                        line={"color": COLOURS["frontier"], "width": 2}, hoverinfo="skip")
    est = kept_estimate(config, runs)
    if est and est.get("sd") is not None and xs:
        fig.add_scatter(x=[xs[-2] if len(xs) > 1 else xs[0], xs[-1]], y=[est["mean"]] * 2,
                        mode="lines", line={"color": COLOURS["estimate"], "dash": "dash", "width": 2},
                        name=f"kept state's estimate ({est['mean']:.4f} ± {est['sd']:.4f})",
                        hovertemplate=f"kept state's estimate {est['mean']:.6f} ± {est['sd']:.6f}<extra></extra>")
    styles = [("discarded", {"size": 7, "color": COLOURS["discarded"]}),
              ("checks failed", {"size": 8, "color": COLOURS["checks failed"], "symbol": "diamond"}),
              ("undone", {"size": 10, "color": "white", "line": {"color": COLOURS["undone"], "width": 2}}),
              ("re-measure", {"size": 8, "color": COLOURS["kept"], "symbol": "circle-open",
                              "line": {"width": 2}}),
              ("kept", {"size": 11, "color": COLOURS["kept"], "line": {"color": "#163d27", "width": 1}})]
    for name, marker in styles:
        group = [r for r in rows if r["outcome"] == name and r["metric"] is not None]
        if group or name in ("kept", "discarded"):
            fig.add_scatter(x=[r["run"] for r in group], y=[r["metric"] for r in group],
                            mode="markers", name=name, marker=marker,
                            text=[hover(r, metric) for r in group], hoverinfo="text")
    repeated = [r for r in rows if len(r["samples"]) > 1]
    if repeated:            # each seed of a run measured more than once, behind its mean
        fig.add_scatter(x=[r["run"] for r in repeated for _ in r["samples"]],
                        y=[x for r in repeated for x in r["samples"]], mode="markers",
                        name="single seeds of a repeated run", hoverinfo="skip",
                        marker={"size": 5, "color": "rgba(46,157,91,0.45)", "symbol": "line-ew-open",
                                "line": {"width": 2, "color": "rgba(22,61,39,0.55)"}})
    shaken = [r for r in rows if r["disturbed"] and r["metric"] is not None]
    if shaken:
        fig.add_scatter(x=[r["run"] for r in shaken], y=[r["metric"] for r in shaken], mode="markers",
                        name="disturbed (set apart)", hoverinfo="text",
                        text=[hover(r, metric) for r in shaken],
                        marker={"size": 16, "symbol": "triangle-up-open",
                                "color": COLOURS["disturbed"], "line": {"width": 2}})
    crashed = [r for r in rows if r["metric"] is None and r["outcome"] != "revert"]
    if crashed:         # along the bottom: they have no metric to place them by
        fig.add_scatter(x=[r["run"] for r in crashed], y=[0.03] * len(crashed), yaxis="y2",
                        mode="markers", name="crash", hoverinfo="text",
                        text=[hover(r, metric) for r in crashed],
                        marker={"size": 10, "symbol": "x-thin-open", "color": COLOURS["crash"],
                                "line": {"width": 3, "color": COLOURS["crash"]}})
    fig.update_layout(
        template="plotly_white", height=440, margin={"l": 70, "r": 24, "t": 40, "b": 48},
        font={"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13},
        xaxis={"title": {"text": "run"}, "rangemode": "tozero", "zeroline": False,
               "tick0": 0, "dtick": max(1, round(len(runs) / 12)) if len(runs) < 60 else None},
        yaxis={"title": {"text": f"{metric} ({config['direction']} is better)"}, "zeroline": False},
        yaxis2={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0, "font": {"size": 12}},
        hovermode="closest", hoverlabel={"align": "left"}, uirevision="keep",
        modebar={"orientation": "v"})
    return json.loads(fig.to_json())


# ---------------------------------------------------------------------- the header

def progress_text(root: str) -> str:
    """The latest progress report in autoresearch.md (between its markers)."""
    try:
        with open(os.path.join(root, NOTES), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return ""
    if PROGRESS_BEGIN not in text or PROGRESS_END not in text:
        return ""
    return text.split(PROGRESS_BEGIN, 1)[1].split(PROGRESS_END, 1)[0].strip()


def lanes(root: str) -> list[dict]:
    """One lane per worker with what it runs now, then the queue and what waits to be logged."""
    out = []
    for c in candidates(root):
        state = c.get("state")
        out.append({"name": str(c.get("name")), "state": str(state),
                    "worker": str(c.get("worker") or ("queue" if state in IN_FLIGHT else "")),
                    "description": str(c.get("description") or ""),
                    "since": mtime(os.path.join(root, WAVE_DIR, f"{c.get('name')}.json"))})
    return out


def activity(root: str, rows: list[dict]) -> dict:
    """Whether a run is in progress now, since when, and when the next result is due
    (the typical time between results after the last one, or after the start of the run)."""
    running = mtime(os.path.join(root, STATE_DIR, "running.json"))
    times = [r["time"] for r in rows if r["time"]]
    gaps = sorted(b - a for a, b in zip(times, times[1:]) if b > a)[-20:]
    typical = gaps[len(gaps) // 2] if gaps else None
    if not typical:
        durations = sorted(r["seconds"] for r in rows if r["seconds"])
        typical = durations[len(durations) // 2] if durations else None
    last = times[-1] if times else None
    start = running or last
    return {"running_since": running, "run_log": mtime(os.path.join(root, RUN_LOG)),
            "pending": os.path.exists(pending_path(root)), "last_result": last,
            "typical": typical, "next_due": start + typical if start and typical else None}


def header(root: str, config: dict, runs: list[dict], events: list[dict]) -> dict:
    c = confidence(runs, config["direction"])
    base, best = c["baseline"], c["best"]
    gain = c["improvement"]
    ended = [e for e in events if e.get("event") == "end"]
    is_open = bool(read_state(root).get("active")) or not ended or \
        any(e.get("event") == "resume" for e in events[events.index(ended[-1]):])
    p = config.get("platform") or {}
    return {
        "tag": str(config.get("tag", "")), "branch": str(config.get("branch", "")),
        "platform": ", ".join(str(p[k]) for k in ("os", "device") if k in p),
        "dataset": str(config.get("dataset", "")), "budget": budget_text(config) if "budget" in config else None,
        "policy": str(config.get("policy", "")), "metric": str(config["metric"]),
        "direction": config["direction"], "workers": config.get("workers") or 1,
        "done": experiments(runs), "cap": config.get("max_iterations"),
        "kept": len(standing_keeps(runs)), "crashed": sum(r["status"] == "crash" for r in runs),
        "baseline": {"metric": base["metric"], "run": base["run"]} if base else None,
        "best": {"metric": best["metric"], "run": best["run"], "commit": best.get("commit", "")[:7]}
        if best else None,
        "improvement": gain,
        "percent": 100 * gain / abs(base["metric"]) if gain is not None and base["metric"] else None,
        "estimate": estimate_line(config, runs) or "", "noise": noise_line(runs),
        "verdict": c["verdict"], "open": is_open,
        "ended": str(ended[-1].get("reason", "")) if ended and not is_open else "",
        "config": research_config(config),
    }


def view(root: str, log=None) -> dict:
    """Everything the page shows, as JSON-ready data (from `log`, the parsed log, when
    the caller has read it already)."""
    log = log or read_log(root)
    config, runs = log.config, log.runs
    rows = run_rows(runs)
    return {"generated": time.time(), "header": header(root, config, runs, log.events), "runs": rows,
            "figure": figure(config, runs, rows), "progress": progress_text(root),
            "lanes": lanes(root), "activity": activity(root, rows), "warnings": log.warnings}


# ------------------------------------------------------------------------- the page

def script_json(value) -> str:
    """JSON to sit inside a <script> element: nothing in it can close the element."""
    return (json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def page(title: str, plotly: str, data: dict | None = None) -> str:
    """The page. Live (no `data`): it loads plotly.min.js and polls data.json. The
    report (`data` given): Plotly's JavaScript and the data inline, for file:// offline."""
    with open(PAGE, encoding="utf-8") as f:
        text = f.read()
    if data is None:
        script = '<script src="plotly.min.js"></script>'
        embedded = "null"
    else:
        script = "<script>" + plotly.replace("</script", "<\\/script") + "</script>"
        embedded = script_json(data)
    parts = {"@@TITLE@@": html.escape(title), "@@POLL@@": str(POLL_SECONDS * 1000),
             "@@DATA@@": embedded, "<!--@@PLOTLY@@-->": script}
    return re.sub("|".join(map(re.escape, parts)), lambda m: parts[m.group(0)], text)


def plotly_js() -> str:
    """The Plotly JavaScript bundle the Python package ships (offline)."""
    from plotly.offline import get_plotlyjs
    return get_plotlyjs()
