"""The live dashboard and the HTML report, in a real headless Chromium: the page
draws a session the scripts made, shows a new run without a reload, opens offline
from a file, sets every string from the log as text, and the server serves its own
page and data and nothing else."""

import http.client
import io
import json
import os
import re
import time
import urllib.parse

import pytest

from browser import Browser, chromium_path
from core import common
from plugin_helpers import fill_log, ok, run_and_log, script

HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2"> wider MLP'
CLOSER = '</script><script>window.pwned=3</script> deeper model'
POINTS = "document.querySelectorAll('#chart .scatterlayer .point').length"


def require_chromium():
    if chromium_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium not found (bash dev.sh test installs it)")
        pytest.skip("chromium not installed (bash dev.sh test installs it)")


def start(p):
    out = ok(script(p, "dashboard")).stdout
    url = re.search(r"dashboard: (http://\S+/)", out).group(1)
    return url


def get(url, path, host=None, method="GET"):
    """One raw request (the path sent exactly as given): status, headers, body."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.putrequest(method, path, skip_host=True)
    conn.putheader("Host", host or u.netloc)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body


def chart_pixels(png: bytes, box: dict) -> dict:
    """How much of the chart's box is drawn: pixels that are not background, and the
    green of kept points and the frontier (not pixel-exact: the chart is there or not)."""
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert("RGB")
    region = img.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                       int(box["y"] + box["height"])))
    import numpy as np
    px = np.asarray(region).astype(int).reshape(-1, 3)
    r, g, b = px[:, 0], px[:, 1], px[:, 2]
    ink = int((px.min(axis=1) < 200).sum())
    green = int(((g > 110) & (g > r + 40) & (g > b + 20)).sum())
    return {"ink": round(ink / len(px), 4), "green": green}


FILTER = "{ const s = document.getElementById('f-outcome'); s.value = '%s'; s.dispatchEvent(new Event('input')); }"
CHART_BOX = "(() => { const r = document.getElementById('chart').getBoundingClientRect(); " \
            "return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"


@pytest.fixture
def live(project):
    """A session the scripts made (baseline, a keep, a discard, a crash), its dashboard."""
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "keep", "lower learning rate", VAL_BPB=0.97)
    run_and_log(project, "discard", "wider embedding", VAL_BPB=0.99)
    run_and_log(project, "crash", "bad shapes", MODE="crash")
    url = start(project)
    yield project, url
    ok(script(project, "dashboard", "--stop"))


def test_the_live_page_shows_a_new_run_without_reloading(live, tmp_path):
    require_chromium()
    p, url = live
    with Browser() as b:
        b.goto(url)
        assert b.wait_for(f"{POINTS} >= 3 && document.body.dataset.runs === '4'")
        assert b.eval("document.querySelectorAll('#runs tbody tr').length") == 4
        assert "autoresearch · t1" in b.eval("document.getElementById('title').textContent")
        header = b.eval("document.getElementById('cards').textContent")
        assert "4" in header and "0.970000" in header and "baseline 1.000000" in header
        b.eval("window.sameDocument = 'yes'")           # gone if the page reloads
        points = b.eval(POINTS)

        run_and_log(p, "keep", HOSTILE, VAL_BPB=0.95, MODE="ok")
        logged = time.monotonic()
        b.wait_for("document.body.dataset.runs === '5'", timeout=15)
        latency = time.monotonic() - logged
        b.wait_for(f"{POINTS} > {points}")
        assert b.eval("window.sameDocument") == "yes"
        # The description is text on the page: nothing in it ran or became an element.
        cell = b.eval("document.querySelector('#runs tbody tr[data-run=\"5\"] td.desc').textContent")
        assert cell == HOSTILE
        assert b.eval("typeof window.pwned") == "undefined"
        assert b.eval("document.querySelectorAll('main img, #runs script').length") == 0
        assert "0.950000" in b.eval("document.getElementById('cards').textContent")
        # Sorting and filtering the table.
        b.eval("document.querySelector('#runs th[data-key=\"metric\"]').click()")
        first = b.eval("document.querySelector('#runs tbody tr').dataset.run")
        assert first == "5"                              # lowest metric first
        b.eval(FILTER % "crash")
        assert b.eval("[...document.querySelectorAll('#runs tbody tr')].map(r => r.dataset.run)") == ["4"]
        b.eval(FILTER % "")
        time.sleep(0.3)
        png = b.screenshot(tmp_path / "live.png")
        drawn = chart_pixels(png, b.eval(CHART_BOX))
    assert latency < 6, f"the new run took {latency:.1f} s to appear"
    assert drawn["ink"] > 0.005 and drawn["green"] > 500, drawn
    print(f"new run on the page {latency:.2f} s after log-experiment returned; chart {drawn}")


def test_the_html_report_opens_offline_from_a_file(project, tmp_path):
    require_chromium()
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "keep", CLOSER, VAL_BPB=0.96)
    run_and_log(project, "discard", "tied embeddings", VAL_BPB=0.98)
    out = ok(script(project, "summarize", "--html")).stdout
    assert f"wrote {common.HTML_SUMMARY}" in out
    page = project / common.HTML_SUMMARY
    assert "<script src=" not in page.read_text()          # everything it needs is inside
    assert "autoresearch-summary.html" in ok(git_ignored(project)).stdout
    with Browser(offline=True) as b:
        b.goto(page.as_uri())
        assert b.wait_for(f"{POINTS} >= 3 && document.body.dataset.runs === '3'")
        cell = b.eval("document.querySelector('#runs tbody tr[data-run=\"2\"] td.desc').textContent")
        assert cell == CLOSER
        assert b.eval("typeof window.pwned") == "undefined"
        assert b.eval("document.getElementById('run-state').textContent") == "report"
        time.sleep(0.3)
        png = b.screenshot(tmp_path / "report.png")
        drawn = chart_pixels(png, b.eval(CHART_BOX))
        asked = b.requests()
    assert [u for u in asked if not u.startswith(("file:", "data:", "blob:"))] == []
    assert drawn["ink"] > 0.005 and drawn["green"] > 500, drawn


def git_ignored(p):
    import subprocess
    return subprocess.run(["git", "check-ignore", "-v", common.HTML_SUMMARY], cwd=p,
                          capture_output=True, text=True)


def test_the_server_serves_its_page_and_data_and_refuses_everything_else(live):
    p, url = live
    assert urllib.parse.urlsplit(url).hostname == "127.0.0.1"
    status, headers, body = get(url, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"data.json" in body
    status, headers, body = get(url, "/data.json")
    data = json.loads(body)
    assert status == 200 and len(data["runs"]) == 4 and data["header"]["tag"] == "t1"
    assert get(url, "/plotly.min.js")[0] == 200
    for path in ("/../autoresearch.jsonl", "/%2e%2e/%2e%2e/etc/passwd", "/..%2fautoresearch.jsonl",
                 "/static/../../train.py", "/..\\train.py"):
        assert get(url, path)[0] == 403, path
    for path in ("/autoresearch.jsonl", "/results.tsv", "/train.py", "/.autoresearch/",
                 "/.autoresearch/lock", "/.git/config", "/static/", "/data.json/x"):
        assert get(url, path)[0] == 404, path
    assert get(url, "/", method="POST")[0] == 405
    assert get(url, "/data.json", host="attacker.example:80")[0] == 403     # DNS rebinding
    again = ok(script(p, "dashboard")).stdout
    assert "already running" in again and url in again


def test_the_dashboard_reads_without_the_lock_and_writes_nothing(live):
    p, url = live
    before = (p / common.LOG).read_bytes(), (p / common.LOG).stat().st_mtime_ns
    with common.Lock(str(p)):                    # a log-experiment in the middle of its write
        t = time.monotonic()
        status, _, body = get(url, "/data.json")
        assert status == 200 and time.monotonic() - t < 5
    assert ((p / common.LOG).read_bytes(), (p / common.LOG).stat().st_mtime_ns) == before
    # A wave's candidates show as lanes, one per worker.
    wave = p / common.WAVE_DIR
    wave.mkdir(parents=True, exist_ok=True)
    (wave / "c1.json").write_text(json.dumps({"name": "c1", "state": "running", "worker": "cpu0",
                                              "description": "rope base 50k"}))
    (wave / "c2.json").write_text(json.dumps({"name": "c2", "state": "queued", "description": "gelu"}))
    lanes = json.loads(get(url, "/data.json")[2])["lanes"]
    assert [(c["name"], c["worker"], c["state"]) for c in lanes] == [("c1", "cpu0", "running"),
                                                                    ("c2", "queue", "queued")]
    stopped = ok(script(p, "dashboard", "--stop")).stdout
    assert "stopped the dashboard" in stopped
    with pytest.raises(OSError):
        get(url, "/")
    assert not (p / common.STATE_DIR / "dashboard.json").exists()


def test_a_thousand_run_log_is_answered_quickly(project):
    fill_log(project, 1000)
    url = start(project)
    try:
        t = time.monotonic()
        status, _, body = get(url, "/data.json")        # built from the log
        first = time.monotonic() - t
        t = time.monotonic()
        get(url, "/data.json")                          # unchanged: from the cache
        cached = time.monotonic() - t
        with open(project / common.LOG, "a") as f:      # one more record: built again
            f.write((project / common.LOG).read_text().splitlines()[-1].replace('"run": 1000', '"run": 1001') + "\n")
        t = time.monotonic()
        runs = len(json.loads(get(url, "/data.json")[2])["runs"])
        rebuilt = time.monotonic() - t
    finally:
        ok(script(project, "dashboard", "--stop"))
    assert status == 200 and len(json.loads(body)["runs"]) == 1000 and runs == 1001
    print(f"1,000 runs: first {first * 1000:.0f} ms, cached {cached * 1000:.1f} ms, "
          f"after a new record {rebuilt * 1000:.0f} ms")
    assert rebuilt < 1.5 and cached < 0.2, (first, cached, rebuilt)


def test_dashboard_refuses_a_project_without_a_session(tmp_path):
    from plugin_helpers import make_project
    p = make_project(tmp_path / "p")
    proc = script(p, "dashboard")
    assert proc.returncode == 2 and "no session here" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert "no dashboard is running" in ok(script(p, "dashboard", "--stop")).stdout
