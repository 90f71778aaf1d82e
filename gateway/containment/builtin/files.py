"""The built-in ``files`` tool set: read_file, write_file, list_dir, search, stat — each in a fresh worker.

The file operations run inside the sandbox (``files_worker.py``), so what a path may reach is decided by the
profile's mounts, Landlock rules and the agent's uid, not by path checks in the gateway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from connectors.jsonrpc import RemoteError
from gateway.containment.builtin.answer import ENVELOPE, bounded, fit, json_len
from gateway.containment.builtin.toolset import Toolset, arg, only, text_result
from gateway.containment.launcher import LaunchRequest
from gateway.containment.profile import Profile
from gateway.containment.runtime import RunResult
from gateway.errors import INVALID_PARAMS

WORKER_SCRIPT = (Path(__file__).parent / "files_worker.py").read_bytes()
_PATH = {"type": "string", "description": "A path relative to your workspace, or absolute within your grants."}


def _tool(
    name: str, title: str, description: str, props: dict[str, Any], required: list[str], read_only: bool
) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "description": description,
        "inputSchema": {"type": "object", "properties": props, "required": required, "additionalProperties": False},
        "annotations": {"readOnlyHint": read_only, "destructiveHint": not read_only, "openWorldHint": False},
    }


TOOLS = [
    _tool(
        "read_file",
        "Read a file",
        "Read a text file (at most the gateway's output limit per call).",
        {"path": _PATH, "offset": {"type": "integer", "minimum": 0}, "max_bytes": {"type": "integer", "minimum": 1}},
        ["path"],
        True,
    ),
    _tool(
        "write_file",
        "Write a file",
        "Write (or append) text to a file.",
        {
            "path": _PATH,
            "content": {"type": "string"},
            "append": {"type": "boolean"},
            "create_dirs": {"type": "boolean"},
        },
        ["path", "content"],
        False,
    ),
    _tool("list_dir", "List a directory", "List the entries of a directory.", {"path": _PATH}, ["path"], True),
    _tool(
        "search",
        "Search files",
        "Search text files under a directory for a regular expression.",
        {
            "path": _PATH,
            "pattern": {"type": "string"},
            "glob": {"type": "string"},
            "max_results": {"type": "integer", "minimum": 1, "maximum": 1000},
        },
        ["path", "pattern"],
        True,
    ),
    _tool(
        "stat", "Describe a path", "Type, size, mode and modification time of a path.", {"path": _PATH}, ["path"], True
    ),
]
_ARGS: dict[str, dict[str, Any]] = {
    "read_file": {"path": str, "offset": int, "max_bytes": int},
    "write_file": {"path": str, "content": str, "append": bool, "create_dirs": bool},
    "list_dir": {"path": str},
    "search": {"path": str, "pattern": str, "glob": str, "max_results": int},
    "stat": {"path": str},
}
_MINIMUM = {"offset": 0, "max_bytes": 1, "max_results": 1}


class FilesTools(Toolset):
    def tools(self) -> list[dict[str, Any]]:
        return TOOLS

    async def call(
        self, name: str, args: dict[str, Any], agent: str, profile: Profile, timeout: float
    ) -> tuple[dict[str, Any], RunResult | None]:
        spec = _ARGS.get(name)
        if spec is None:
            raise RemoteError(INVALID_PARAMS, f"Unknown tool: {name}")
        only(args, spec)
        req: dict[str, Any] = {"op": name, "limit": self.output_limit}
        for key, kind in spec.items():
            value = arg(args, key, kind, required=key in ("path", "content", "pattern"), minimum=_MINIMUM.get(key))
            if value is not None:
                req[key] = value
        if "\x00" in req["path"]:
            raise RemoteError(INVALID_PARAMS, "path must not contain NUL")
        launch = LaunchRequest(self.cfg.name, agent, profile, [], dict(self.cfg.env), None, WORKER_SCRIPT)
        capture = 8 * self.output_limit + 65536  # JSON escaping can grow the content; the worker caps the content
        run = await self.runtime.run_once(launch, json.dumps(req).encode(), timeout, capture)
        if run.limit:
            return text_result(f"The tool's worker was stopped: {run.limit}.", error=True), run
        try:
            answer = json.loads(run.stdout)
        except ValueError:
            err = run.stderr.decode("utf-8", "replace").strip()[-500:]
            return text_result(f"{name} failed in its worker (exit code {run.exit_code}): {err}", error=True), run
        if not answer.get("ok"):
            error = str(answer.get("error"))
            if "No space left on device" in error:
                error += f" ({self.workspace_full(agent, True) or 'the workspace quota, containment.max_workspace_mb'})"
            return bounded(text_result(f"{name}: {error}", error=True), self.answer_limit), run
        result = answer["result"]
        per_copy = (self.answer_limit - ENVELOPE) // 2  # the answer holds the text and the structured copy
        if name == "read_file":
            result["content"], cut = fit(result["content"], per_copy)
            result["truncated"] = bool(result.get("truncated")) or cut
        for key in ("entries", "matches"):
            items = result.get(key)
            if isinstance(items, list) and json_len(items) > per_copy // 2:  # the text copy is indented JSON
                keep = _fitting(items, per_copy // 2)
                result[key], result["truncated"] = items[:keep], True
        text = result["content"] if name == "read_file" else json.dumps(result, indent=1, ensure_ascii=False)
        return bounded(text_result(text, result), self.answer_limit), run


def _fitting(items: list[Any], budget: int) -> int:
    """How many leading items fit ``budget`` bytes of JSON."""
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if json_len(items[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo
