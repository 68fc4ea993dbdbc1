"""A scripted stand-in for the Anthropic Messages API on 127.0.0.1.

Claude Code, pointed at it with ANTHROPIC_BASE_URL, sends `POST /v1/messages` with
`stream: true`; this server answers each main-loop request with the next step of a
fixed script: tool calls or text, streamed as server-sent events exactly as the API
streams them. Each step is a function that receives the request body (so it can
check what the client sent: the expanded slash command, a tool result, a Stop-hook
message) and returns the content blocks to answer with. Anything the script does not
expect (an unknown path, a request after the script ended, a failed check) is
recorded in `errors` and answered with an HTTP 500, so the test fails.

Usage:
    with ScriptedModel(steps) as model:
        env = model.client_env(home)          # ANTHROPIC_BASE_URL, dummy key, ...
        subprocess.run([claude, "-p", ...], env=env)
    assert model.errors == [] and model.finished
"""
from __future__ import annotations

import itertools
import json
import re
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def text(t: str) -> dict:
    return {"type": "text", "text": t}


_ids = itertools.count(1)


def tool(name: str, **tool_input) -> dict:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": tool_input}


def last_user_content(body: dict) -> list:
    """The blocks of the last user message (tool results, hook feedback, the prompt)."""
    msg = [m for m in body["messages"] if m["role"] == "user"][-1]
    content = msg["content"]
    return [text(content)] if isinstance(content, str) else content


def tool_results(body: dict) -> list[dict]:
    out = []
    for block in last_user_content(body):
        if block.get("type") == "tool_result":
            content = block.get("content")
            if isinstance(content, list):
                content = "".join(c.get("text", "") for c in content)
            out.append({"text": content or "", "is_error": bool(block.get("is_error"))})
    return out


def user_text(body: dict) -> str:
    """All text the client put in the last user message, tool results excluded."""
    parts = []
    for block in last_user_content(body):
        if block.get("type") == "text":
            parts.append(block["text"])
    return "\n".join(parts)


def all_text(body: dict) -> str:
    """Every text the conversation holds so far (for checks that do not care where)."""
    return json.dumps(body["messages"])


def only_result(body: dict, *needles: str, error: bool | None = None) -> str:
    """The text of the one tool result in the last request, which must contain every
    needle (and be an error, or not, when `error` says)."""
    results = tool_results(body)
    assert len(results) == 1, results
    for n in needles:
        assert n in results[0]["text"], f"{n!r} not in tool result {results[0]['text'][:800]!r}"
    if error is not None:
        assert results[0]["is_error"] is error, results[0]
    return results[0]["text"]


def log_as_recommended(scripts: str, out: str, description: str, decisions: list) -> list:
    """The log-experiment call that follows a run's `recommend:` line in `out`; the
    decision is appended to `decisions`."""
    decision = re.search(r"^recommend: (\w+)", out, re.M).group(1)
    decisions.append(decision)
    return [tool("Bash", command=f'"{scripts}/log-experiment" --status {decision} '
                                 f"--description {shlex.quote(description)}")]


def guarded_baseline(seen: dict) -> list:
    """Two steps of a session: after the guard denied a change to the harness, run the
    baseline, then log it as kept; `seen["scripts"]` is the folder setup printed."""
    def run_baseline(body):
        only_result(body, "autoresearch guard", "fixed harness", error=True)
        return [tool("Bash", command=f'"{seen["scripts"]}/run-experiment"', timeout=600000)]

    def log_baseline(body):
        only_result(body, "METRIC val_bpb=1.0", "status: ok run 1", "recommend: keep")
        return [tool("Bash", command=f'"{seen["scripts"]}/log-experiment" --status keep '
                                     "--description 'baseline'")]
    return [run_baseline, log_baseline]


class ScriptedModel:
    def __init__(self, steps):
        self.steps = list(steps)
        self.requests: list[dict] = []
        self.errors: list[str] = []
        self.step = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def finished(self) -> bool:
        return self.step == len(self.steps)

    def client_env(self, home: str, **extra) -> dict:
        import os
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
        env.update(HOME=home, ANTHROPIC_BASE_URL=self.url, ANTHROPIC_API_KEY="sk-ant-test-dummy",
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1",
                   DISABLE_TELEMETRY="1", DISABLE_ERROR_REPORTING="1", **extra)
        return env

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # -- the script ----------------------------------------------------------------

    def answer(self, body: dict) -> tuple[list, str]:
        with self._lock:
            self.requests.append(body)
            if self.step >= len(self.steps):
                raise AssertionError(f"request {len(self.requests)} after the script ended: "
                                     f"{user_text(body)[:300]!r}")
            step = self.steps[self.step]
            self.step += 1
        blocks = step(body)
        usage = None
        if isinstance(blocks, tuple):       # (blocks, usage): report another context size
            blocks, usage = blocks
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        return blocks, stop, usage

    def _handler(self):
        model = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.send_response(200)
                self.end_headers()

            def fail(self, message):
                model.errors.append(message)
                self.send_response(500)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"type": "error", "error": {
                    "type": "api_error", "message": message}}).encode())

            def do_GET(self):
                self.fail(f"unexpected GET {self.path}")

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                if self.path.startswith("/v1/messages/count_tokens"):
                    # The CLI sizes large tool results with the token-counting endpoint:
                    # answer it (roughly 4 bytes a token); it is not a turn of the script.
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"input_tokens": max(1, length // 4)}).encode())
                    return
                if not self.path.startswith("/v1/messages"):
                    return self.fail(f"unexpected POST {self.path}")
                try:
                    body = json.loads(raw)
                    if not body.get("stream"):
                        raise AssertionError("expected a streaming request")
                    blocks, stop, usage = model.answer(body)
                except Exception as e:      # a failed check or a broken step: fail loudly
                    return self.fail(f"step {model.step}: {type(e).__name__}: {e}")
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.end_headers()
                self.wfile.write(sse_stream(blocks, stop, body.get("model", "claude-test"), usage))
                self.wfile.flush()

        return Handler


def sse_stream(blocks: list, stop_reason: str, model: str, usage: dict | None = None) -> bytes:
    """One assistant message as the Messages API streams it. `usage` replaces the
    token counts reported (a large input_tokens makes the client compact its context)."""
    events = [("message_start", {"type": "message_start", "message": {
        "id": f"msg_{next(_ids):04d}", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": usage or {"input_tokens": 10, "output_tokens": 1}}})]
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": {"type": "text", "text": ""}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "text_delta", "text": block["text"]}})]
        else:
            events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": {**block, "input": {}}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "input_json_delta",
                                                          "partial_json": json.dumps(block["input"])}})]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events += [("message_delta", {"type": "message_delta",
                                  "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                  "usage": {"output_tokens": 5}}),
               ("message_stop", {"type": "message_stop"})]
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)
