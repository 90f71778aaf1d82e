"""A small stdio MCP server on the standard library only, to run *inside* contained workers.

It has to start under any host python3 with no site packages (the sandbox binds only what a profile grants),
so it speaks newline-delimited JSON-RPC itself instead of using the SDK. Tools: ``run`` (a command with
``/bin/sh -c``, answered like the built-in shell tool), ``whoami``, ``echo``, ``sleep``. Requests are served on
threads, so a slow call does not hold up the others.
"""

import json
import os
import subprocess
import sys
import threading
import time

PROTOCOL = "2025-11-25"
MAX_OUT = 65536
_write = threading.Lock()
INSTANCE = os.urandom(6).hex()

TOOLS = [
    {
        "name": "run",
        "description": "Run a command with /bin/sh -c inside this server's worker.",
        "inputSchema": {
            "type": "object",
            "properties": {"command": {"type": "string"}, "stdin": {"type": "string"}, "timeout_s": {"type": "number"}},
            "required": ["command"],
        },
    },
    {
        "name": "whoami",
        "description": "The worker's pid, uid, gid and working directory.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "echo",
        "description": "Echo the text back.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
    {
        "name": "sleep",
        "description": "Sleep for `seconds`.",
        "inputSchema": {"type": "object", "properties": {"seconds": {"type": "number"}}},
    },
]


def send(msg):
    data = json.dumps(msg) + "\n"
    with _write:
        sys.stdout.write(data)
        sys.stdout.flush()


def text(t, structured=None, error=False):
    out = {"content": [{"type": "text", "text": t}], "isError": error}
    if structured is not None:
        out["structuredContent"] = structured
    return out


def run(args):
    try:
        p = subprocess.run(
            ["/bin/sh", "-c", args["command"]],
            input=args.get("stdin", "").encode(),
            capture_output=True,
            timeout=args.get("timeout_s") or 600,
            cwd=os.getcwd(),
        )
        code, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = None, exc.stdout or b"", (exc.stderr or b"") + b"\n(timed out)"
    except OSError as exc:
        code, out, err = None, b"", (f"cannot run: {exc}").encode()
    s = {
        "exit_code": code,
        "stdout": out[:MAX_OUT].decode("utf-8", "replace"),
        "stderr": err[:MAX_OUT].decode("utf-8", "replace"),
        "stdout_truncated": len(out) > MAX_OUT,
        "stderr_truncated": len(err) > MAX_OUT,
        "killed": None,
    }
    body = "exit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}".format(code, s["stdout"], s["stderr"])
    return text(body, s)


def call(name, args):
    if name == "run":
        return run(args)
    if name == "whoami":
        info = {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "instance": INSTANCE}
        return text(json.dumps(info), info)
    if name == "echo":
        return text(str(args.get("text", "")))
    if name == "sleep":
        time.sleep(float(args.get("seconds", 1)))
        return text("slept")
    return text(f"Unknown tool: {name}", error=True)


def handle(msg):
    method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
    try:
        if method == "initialize":
            result = {
                "protocolVersion": params.get("protocolVersion", PROTOCOL),
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "box", "version": "1.0"},
            }
        elif method == "ping":
            result = {}
        elif method == "tools/list":
            result = {"tools": TOOLS}
        elif method == "tools/call":
            result = call(params.get("name"), params.get("arguments") or {})
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"no method {method}"}})
            return
        send({"jsonrpc": "2.0", "id": rid, "result": result})
    except Exception as exc:  # a tool failure is the caller's answer, never this server's death
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": str(exc)}})


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "id" not in msg or "method" not in msg:
            continue  # notifications and responses: nothing to do
        threading.Thread(target=handle, args=(msg,), daemon=True).start()


if __name__ == "__main__":
    main()
