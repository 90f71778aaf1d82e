"""The built-in ``shell`` tool set: ``run`` a command with ``/bin/sh -c`` in a fresh contained worker."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from connectors.jsonrpc import RemoteError
from gateway.containment.builtin.answer import ENVELOPE, bounded, fit, split_budget
from gateway.containment.builtin.toolset import Toolset, arg, only, text_result
from gateway.containment.launcher import LaunchRequest
from gateway.containment.profile import Profile
from gateway.containment.runtime import RunResult
from gateway.errors import INVALID_PARAMS

RUN_TOOL = {
    "name": "run",
    "title": "Run a shell command",
    "description": (
        "Run a command with /bin/sh -c in a fresh sandboxed worker whose working directory is your workspace. "
        "Returns the exit code, stdout and stderr (truncated at the gateway's output limit). The worker sees only "
        "the paths its containment profile grants, and is stopped when it exceeds the profile's limits."
    ),
    "inputSchema": {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command line, run by /bin/sh -c."},
            "stdin": {"type": "string", "description": "Text given to the command on its standard input."},
            "cwd": {"type": "string", "description": "Working directory, relative to your workspace or absolute."},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "description": "At most the profile's timeout."},
        },
        "required": ["command"],
        "additionalProperties": False,
    },
    "outputSchema": {
        "type": "object",
        "properties": {
            "exit_code": {"type": ["integer", "null"]},
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "stdout_truncated": {"type": "boolean"},
            "stderr_truncated": {"type": "boolean"},
            "killed": {"type": ["string", "null"], "description": "The limit that stopped the worker, if any."},
        },
        "required": ["exit_code", "stdout", "stderr"],
    },
    "annotations": {"destructiveHint": True, "openWorldHint": True},
}


def resolve_cwd(cwd: str | None) -> str | None:
    if cwd is None or cwd == "":
        return None
    if "\x00" in cwd:
        raise RemoteError(INVALID_PARAMS, "cwd must not contain NUL")
    return cwd if cwd.startswith("/") else "{workspace}/" + cwd


def shell_result(run: RunResult, answer_limit: int, workspace_full: str | None = None) -> dict[str, Any]:
    """The answer: stdout and stderr in a text copy and a structured copy, cut so the serialized whole fits
    ``answer_limit`` (each copy gets half of what the fixed parts leave; see answer.py)."""
    out = run.stdout.decode("utf-8", "replace")
    err = run.stderr.decode("utf-8", "replace")
    helper_failed = run.exit_code in (125, 126, 127) and "mcpgw-helper:" in err
    out_budget, err_budget = split_budget([out, err], (answer_limit - ENVELOPE) // 2)
    out, out_cut = fit(out, out_budget)
    err, err_cut = fit(err, err_budget)
    structured = {
        "exit_code": run.exit_code,
        "stdout": out,
        "stderr": err,
        "stdout_truncated": run.stdout_truncated or out_cut,
        "stderr_truncated": run.stderr_truncated or err_cut,
        "killed": run.kill_reason,
    }
    lines = [f"exit code: {run.exit_code}"]
    if run.limit:
        lines.append(f"stopped: {run.limit}")
    if workspace_full:
        structured["workspace_full"] = True
        lines.append(workspace_full)
    lines.append("--- stdout ---" + (" (truncated)" if structured["stdout_truncated"] else ""))
    lines.append(out)
    lines.append("--- stderr ---" + (" (truncated)" if structured["stderr_truncated"] else ""))
    lines.append(err)
    result = text_result("\n".join(lines), structured, error=run.kill_reason is not None or helper_failed)
    return bounded(result, answer_limit)


class ShellTools(Toolset):
    def tools(self) -> list[dict[str, Any]]:
        return [RUN_TOOL]

    async def call(
        self, name: str, args: dict[str, Any], agent: str, profile: Profile, timeout: float
    ) -> tuple[dict[str, Any], RunResult | None]:
        if name != "run":
            raise RemoteError(INVALID_PARAMS, f"Unknown tool: {name}")
        only(args, ("command", "stdin", "cwd", "timeout_s"))
        command = arg(args, "command", str, required=True)
        if "\x00" in command:
            raise RemoteError(INVALID_PARAMS, "command must not contain NUL")
        stdin = arg(args, "stdin", str) or ""
        cwd = resolve_cwd(arg(args, "cwd", str))
        t = arg(args, "timeout_s", (int, float))
        if t is not None:
            if t <= 0:
                raise RemoteError(INVALID_PARAMS, "timeout_s must be positive")
            timeout = min(timeout, float(t))
            if timeout < profile.timeout_s:
                profile = replace(profile, timeout_s=timeout)
        req = LaunchRequest(self.cfg.name, agent, profile, ["/bin/sh", "-c", command], dict(self.cfg.env), cwd)
        run = await self.runtime.run_once(req, stdin.encode("utf-8", "surrogatepass"), timeout, self.output_limit)
        enospc = b"No space left on device" in run.stderr or b"No space left on device" in run.stdout
        return shell_result(run, self.answer_limit, self.workspace_full(agent, enospc)), run
