#!/usr/bin/env python3
"""Serve a live dashboard of the session on this machine, in the background.

Prints the URL and returns at once; the page updates itself within a few seconds of
each new record: the progress chart (every run, the kept frontier, the noise band,
the kept state's estimate), the header (best against the baseline, runs done of the
cap, whether a run is in progress, when the next result is due), the runs table,
the latest progress report and, with waves, what each worker runs.

Safe by default: bound to 127.0.0.1 on a free port, read only (it reads
autoresearch.jsonl and the files beside it as they change; no git, no lock, no
writes but its own pid file), and it serves its page, data.json and Plotly's
JavaScript, nothing else. `--stop` stops it; `--foreground` runs it in this
terminal instead.
"""
import argparse
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, report  # noqa: E402

PID_FILE = os.path.join(common.STATE_DIR, "dashboard.json")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Session:
    """The session's data, rebuilt only when a watched file changed (a few stat calls
    per request otherwise)."""

    def __init__(self, root: str):
        self.root, self.key, self.body = root, None, b""
        self.lock = threading.Lock()
        self.page = report.page(f"autoresearch {os.path.basename(root)}", "").encode()
        self._plotly = None

    def data(self) -> bytes:
        key = report.signature(self.root)
        with self.lock:
            if key != self.key:
                try:
                    view = report.view(self.root)
                    view["version"] = key
                except (OSError, common.UserError) as e:
                    view = {"version": key, "error": str(e)}
                self.body = json.dumps(view, allow_nan=False).encode()
                self.key = key
            return self.body

    def plotly(self) -> bytes:
        if self._plotly is None:
            self._plotly = report.plotly_js().encode()
        return self._plotly


def handler_for(session: Session, allowed_hosts):
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "autoresearch-dashboard"
        sys_version = ""

        def log_message(self, *args):      # quiet: the loop's terminal is not ours
            pass

        def send(self, code: int, body: bytes, kind: str = "text/plain; charset=utf-8",
                 cache: str = "no-store"):
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy",
                             "default-src 'none'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
                             "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
                             "connect-src 'self'; font-src 'self' data:; base-uri 'none'; "
                             "form-action 'none'; frame-ancestors 'none'")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            host = (self.headers.get("Host") or "").lower()
            if allowed_hosts is not None and host not in allowed_hosts:
                # Another site's page that renamed itself to 127.0.0.1 (DNS rebinding)
                # asks with its own host name: it gets nothing.
                return self.send(403, b"forbidden: unknown host\n")
            path = urllib.parse.urlsplit(self.path).path
            name = urllib.parse.unquote(path)
            if ".." in name or "\\" in name or "\0" in name or not name.startswith("/"):
                return self.send(403, b"forbidden\n")
            if name in ("/", "/index.html"):
                return self.send(200, session.page, "text/html; charset=utf-8")
            if name == "/data.json":
                return self.send(200, session.data(), "application/json")
            if name == "/plotly.min.js":
                return self.send(200, session.plotly(), "text/javascript; charset=utf-8",
                                 cache="max-age=3600")
            return self.send(404, b"not found\n")

        do_HEAD = do_GET

        def refuse(self):
            self.send(405, b"read only\n")

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = refuse

    return Handler


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve(root: str, host: str, port: int) -> None:
    session = Session(root)
    server = Server((host, port), None)
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    allowed = ({f"{h}:{bound}" for h in ("127.0.0.1", "localhost", "[::1]")}
               if host in LOOPBACK else None)
    server.RequestHandlerClass = handler_for(session, allowed)
    url = f"http://{shown}:{bound}/"
    os.makedirs(os.path.join(root, common.STATE_DIR), exist_ok=True)
    common.write_atomic(os.path.join(root, PID_FILE),
                        json.dumps({"pid": os.getpid(), "url": url, "started": common.now_iso()}) + "\n")

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"dashboard: {url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        info = running_info(root, check=False)
        if info and info.get("pid") == os.getpid():
            os.unlink(os.path.join(root, PID_FILE))


def alive(pid: int) -> bool:
    """Whether `pid` is a dashboard of ours (not a process that reused the number)."""
    try:
        os.kill(pid, 0)
    except (OSError, TypeError):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"dashboard" in f.read()
    except FileNotFoundError:
        return not os.path.isdir("/proc")
    except OSError:
        return True


def running_info(root: str, check: bool = True) -> dict | None:
    try:
        info = common.read_json(os.path.join(root, PID_FILE), default=None)
    except common.UserError:
        return None
    if not isinstance(info, dict) or (check and not alive(info.get("pid"))):
        return None
    return info


def start_background(root: str, host: str, port: int) -> str:
    """Start the server detached from this terminal; its URL once it listens."""
    log = open(os.path.join(root, common.STATE_DIR, "dashboard.log"), "ab")
    script = os.path.join(common.SCRIPTS_DIR, "dashboard")
    proc = subprocess.Popen([sys.executable, script, "--foreground", "--host", host, "--port", str(port)],
                            cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, env={**os.environ, "AUTORESEARCH_NO_REEXEC": "1"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        info = running_info(root)
        if info and info.get("pid") == proc.pid:
            return info["url"]
        if proc.poll() is not None:
            raise common.UserError(f"the dashboard did not start (exit {proc.returncode}): see "
                                   f"{common.STATE_DIR}/dashboard.log")
        time.sleep(0.05)
    proc.kill()
    raise common.UserError(f"the dashboard did not start within 20 s: see {common.STATE_DIR}/dashboard.log")


def stop_running(root: str) -> str:
    info = running_info(root)
    if not info:
        if os.path.exists(os.path.join(root, PID_FILE)):
            os.unlink(os.path.join(root, PID_FILE))
        return "no dashboard is running here"
    os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive(info["pid"]):
        time.sleep(0.05)
    return f"stopped the dashboard at {info['url']} (pid {info['pid']})"


def main(argv=None):
    p = argparse.ArgumentParser(prog="dashboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; another one exposes the session to that network)")
    p.add_argument("--foreground", action="store_true", help="serve in this terminal until Ctrl-C")
    p.add_argument("--stop", action="store_true", help="stop the dashboard running for this project")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 <= a.port <= 65535:
        raise common.UserError(f"--port {a.port} is not a port (0 picks a free one)")
    root = common.find_root()
    if a.stop:
        print(stop_running(root))
        return 0
    if not os.path.exists(os.path.join(root, common.LOG)):
        raise common.UserError(f"no session here ({common.LOG} not found in {root}): start one with "
                               "setup-session (or /experiment:model <tag>)")
    common.use_project_python(root, common.PLOT_NEEDS)
    info = running_info(root)
    if info:
        print(f"dashboard: {info['url']} (already running, pid {info['pid']}; dashboard --stop stops it)")
        return 0
    if a.foreground:
        try:
            serve(root, a.host, a.port)
        except OSError as e:
            raise common.UserError(f"cannot listen on {a.host}:{a.port}: {e.strerror or e}") from None
        return 0
    url = start_background(root, a.host, a.port)
    print(f"dashboard: {url} (in the background; dashboard --stop stops it)")
    return 0


if __name__ == "__main__":
    common.run_main(main)
