"""conformance/run fleet: three replicas behind round-robin nginx, Redis, a recording upstream; load, then kill -9.

All real and on loopback: redis-server, nginx (deploy/nginx/mcp-gateway.conf), three gateway replicas with
``[fleet]``, and the recording MCP server over HTTP as the shared upstream (it writes down every message it gets).

1. a per-agent limit of N calls per minute allows at most N across all replicas (calls land on all three);
2. a load of 60 sessions of 12 agents, both protocol eras, through nginx; one replica is killed (``kill -9``)
   half way:
   - before the kill, no call fails;
   - sessions whose agent is owned by a live replica keep their session: at most the one request that was
     passing through the killed replica at that moment fails, and they go on with the same session id;
   - sessions of the killed replica's agents recover by re-initializing on a live replica within two TTLs (the
     agent moves at once, on the first refused hop; the client's 404s and its new handshake take the rest) and
     go on calling (the times are printed: on a loaded host they are the host's);
   - 2026-era sessions go on (a request in flight on the killed replica may fail);
3. every call the upstream received has a decision record in some replica's audit log (the union of the logs).

Bundle convergence and decision-log shipping checks join this suite beside these (``bundles``).
Prints a line per check and ends with ``N passed, M failed``; exits non-zero when anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import anyio  # noqa: E402
from conftest import RunningGateway, free_port, mcp_client, sha  # noqa: E402
from fleet_support import SECRET, Proc, start_nginx, start_redis  # noqa: E402

from gateway.fleet.membership import Member, rendezvous  # noqa: E402
from gateway.record import digest  # noqa: E402

RECORDER = [sys.executable, str(REPO / "tests" / "fixtures" / "recording_server.py")]
AGENTS = [f"agent-{i:02d}" for i in range(12)]
QUOTA_AGENT = "quota-agent"
PER_MINUTE = 7
TOOL = "rec__echo"
TTL_S = 6.0


def key_of(agent: str) -> str:
    return f"key-{agent}"


@dataclass
class Results:
    passed: int = 0
    failed: int = 0
    lines: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        line = f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else "")
        self.lines.append(line)
        print(line, flush=True)


def policy_dir(work: Path) -> Path:
    """The shipped policy with the ci role of team platform allowed the recording upstream."""
    policy = work / "rego"
    shutil.copytree(REPO / "rego", policy)
    data = json.loads((policy / "data.json").read_text())
    data["teams"]["platform"]["roles"]["ci"]["rec"] = ["*"]
    (policy / "data.json").write_text(json.dumps(data))
    return policy


def replica_config(work: Path, rid: str, port: int, redis_port: int, hosts: list[str], rec_port: int) -> str:
    keys = "".join(
        f'[[identity.api_keys]]\nagent = "{a}"\nteam = "platform"\nroles = ["ci"]\nsha256 = "{sha(key_of(a))}"\n\n'
        for a in [*AGENTS, QUOTA_AGENT]
    )
    return f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{free_port()}"
allowed_hosts = {json.dumps(hosts)}
max_sessions_per_agent = 20

{keys}
[policy]
path = "{work / "rego"}"

[audit]
path = "{work / rid / "audit.jsonl"}"

[fleet]
redis_url = "redis://127.0.0.1:{redis_port}/0"
replica_id = "{rid}"
advertise = "http://127.0.0.1:{port}"
heartbeat_s = {TTL_S / 3}
ttl_s = {TTL_S}
secret = "{SECRET}"

[[limits]]
name = "quota-per-minute"
agents = ["{QUOTA_AGENT}"]
calls_per_minute = {PER_MINUTE}
tools = ["rec__*"]

[[upstreams]]
name = "rec"
transport = "http"
url = "http://127.0.0.1:{rec_port}/mcp"
"""


def start_replica(work: Path, rid: str, config: str, port: int) -> RunningGateway:
    from conftest import start_gateway

    return start_gateway(work / rid, config, port, ready_timeout=60)


async def limit_check(url: str, res: Results, replicas: dict[str, RunningGateway]) -> None:
    if time.time() % 60 > 45:
        await anyio.sleep(61 - time.time() % 60)
    ok = refused = 0
    names: set[str] = set()
    async with mcp_client(url, key_of(QUOTA_AGENT), "2026-07-28") as c:
        for i in range(3 * PER_MINUTE):
            try:
                r = await c.call_tool(TOOL, {"text": f"quota-{i}"})
                ok += 0 if r.is_error else 1
            except Exception as exc:
                refused += 1
                names.add(str(getattr(exc, "data", {}) and exc.data.get("limit")))  # type: ignore[attr-defined]
    served = [
        rid
        for rid, gw in replicas.items()
        if any(r.get("agent") == QUOTA_AGENT and r.get("outcome") == "ok" for r in gw.audit_records())
    ]
    res.check(
        f"a limit of {PER_MINUTE} calls/minute allows at most {PER_MINUTE} across the replicas",
        ok == PER_MINUTE and refused == 2 * PER_MINUTE and names == {"quota-per-minute"},
        f"{ok} allowed, {refused} refused (limits {sorted(names)}), served by {sorted(served)}",
    )


@dataclass
class Session:
    agent: str
    era: str
    ok_before: int = 0
    errors_before: int = 0
    ok_after: int = 0
    errors_after: int = 0
    reinitialized: int = 0
    recovered_at: float | None = None
    reinit_at: float | None = None
    session_ids: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


async def run_session(s: Session, url: str, stop: anyio.Event, killed: Callable[[], float | None], n: int) -> None:
    """Calls in a loop on one session; when the session is gone (two failures after the kill), a new one is
    opened at once while the old client winds down in the background (bounded)."""
    counter = [0]
    async with anyio.create_task_group() as tg:
        while not stop.is_set():
            gone = anyio.Event()
            tg.start_soon(one_client, s, url, stop, killed, n, counter, gone)
            with anyio.move_on_after(3600):
                async with anyio.create_task_group() as wait:

                    async def on_stop() -> None:
                        await stop.wait()
                        wait.cancel_scope.cancel()

                    async def on_gone(gone: anyio.Event = gone) -> None:
                        await gone.wait()
                        wait.cancel_scope.cancel()

                    wait.start_soon(on_stop)
                    wait.start_soon(on_gone)
            if not stop.is_set():
                s.reinitialized += 1
                await anyio.sleep(0.1)
        tg.cancel_scope.cancel()


async def one_client(
    s: Session,
    url: str,
    stop: anyio.Event,
    killed: Callable[[], float | None],
    n: int,
    counter: list[int],
    gone: anyio.Event,
) -> None:
    with anyio.move_on_after(3600) as scope:
        try:
            t0 = time.monotonic()
            async with mcp_client(url, key_of(s.agent), s.era) as c:
                if s.reinitialized and s.reinit_at is None:
                    s.reinit_at = time.monotonic()
                    s.messages.append(f"re-initialized in {time.monotonic() - t0:.2f}s")
                while not stop.is_set():
                    counter[0] += 1
                    t_kill = killed()
                    try:
                        t1 = time.monotonic()
                        r = await c.call_tool(TOOL, {"text": f"{s.agent}-{n}-{counter[0]}"})
                        good = not r.is_error
                        if s.reinitialized and s.recovered_at is None:
                            s.messages.append(f"first call {time.monotonic() - t1:.2f}s")
                        if not good:
                            s.messages.append(str(r.content)[:200])
                    except Exception as exc:
                        good = False
                        at = "" if t_kill is None else f"+{time.monotonic() - t_kill:.2f}s "
                        s.messages.append(f"{at}{type(exc).__name__}: {exc} {getattr(exc, 'data', '')}"[:300])
                    t_kill = killed()  # a call that ended after the kill counts after it
                    if t_kill is None:
                        s.ok_before += good
                        s.errors_before += not good
                    else:
                        s.ok_after += good
                        s.errors_after += not good
                        if good and s.recovered_at is None and s.reinitialized:
                            s.recovered_at = time.monotonic()
                    if not good and s.era == "legacy" and t_kill is not None and s.errors_after >= 2:
                        gone.set()  # the session is gone (its replica died): re-initialize, the spec's recovery
                        scope.deadline = anyio.current_time() + 5  # the old client's exit, bounded
                        return
                    await anyio.sleep(0.2)
        except Exception as exc:
            s.messages.append(f"session: {type(exc).__name__}: {exc}"[:200])
        gone.set()


async def load(url: str, res: Results, replicas: dict[str, RunningGateway], seconds: float) -> None:
    members = [Member(rid, f"http://127.0.0.1:{gw.port}") for rid, gw in replicas.items()]
    owners = {a: rendezvous(a, members).id for a in AGENTS}  # type: ignore[union-attr]
    victim = owners[AGENTS[0]]
    sessions = [Session(a, "legacy" if k % 2 == 0 else "2026-07-28") for k in range(5) for a in AGENTS]
    stop = anyio.Event()
    kill_time: list[float] = []
    async with anyio.create_task_group() as tg:
        for n, s in enumerate(sessions):
            tg.start_soon(run_session, s, url, stop, lambda: kill_time[0] if kill_time else None, n)
        await anyio.sleep(seconds / 2)
        with anyio.move_on_after(seconds):  # every session has made a call before the kill
            while not all(s.ok_before for s in sessions):
                await anyio.sleep(0.2)
        replicas[victim].proc.kill()
        replicas[victim].proc.wait()
        kill_time.append(time.monotonic())
        print(f"killed {victim} (owner of {sum(1 for o in owners.values() if o == victim)} agents)", flush=True)
        await anyio.sleep(max(seconds / 2, 3 * TTL_S))  # long enough to see the recovery it checks
        stop.set()
    legacy = [s for s in sessions if s.era == "legacy"]
    modern = [s for s in sessions if s.era != "legacy"]
    res.check(
        "60 sessions of 12 agents, both eras, through round-robin nginx: no error before the kill",
        all(s.errors_before == 0 and s.ok_before > 0 for s in sessions),
        f"{sum(s.ok_before for s in sessions)} calls ok, {sum(s.errors_before for s in sessions)} errors "
        f"{sorted({m for s in sessions if s.errors_before for m in s.messages})[:3]}",
    )
    live = [s for s in legacy if owners[s.agent] != victim]
    res.check(
        "sessions owned by live replicas keep their session (only a request in flight through the killed one fails)",
        all(s.reinitialized == 0 and s.errors_after <= 1 and s.ok_after > 0 for s in live),
        f"{len(live)} sessions, errors after the kill {[s.errors_after for s in live if s.errors_after]}",
    )
    dead = [s for s in legacy if owners[s.agent] == victim]
    reinit = [s.reinit_at - kill_time[0] for s in dead if s.reinit_at is not None]
    delays = [round(s.recovered_at - kill_time[0], 2) for s in dead if s.recovered_at is not None]
    res.check(
        f"sessions of the killed replica's agents re-initialize on a live replica within two TTLs ({2 * TTL_S:g} s)",
        len(reinit) == len(dead) and all(d <= 2 * TTL_S for d in reinit),
        f"{len(dead)} sessions, re-initialized after {sorted(round(d, 2) for d in reinit)} s",
    )
    res.check(
        "... and continue: a call on the new session succeeds",
        len(delays) == len(dead),
        f"first call done after {sorted(delays)} s (this host's load sets these)",
    )
    res.check(
        "2026-era sessions go on after the kill (at most a request in flight on the killed replica fails)",
        all(s.ok_after > 0 and s.errors_after <= 1 for s in modern),
        f"errors after the kill {[s.errors_after for s in modern if s.errors_after]}",
    )


def audit_check(record_file: Path, res: Results, replicas: dict[str, RunningGateway]) -> None:
    received: list[str] = []
    for line in record_file.read_text().splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("method") == "tools/call":
            received.append(digest(msg["params"].get("arguments")))
    decided = {
        r.get("arguments_digest")
        for gw in replicas.values()
        for r in gw.audit_records()
        if r.get("type") == "decision" and r.get("allow")
    }
    missing = [d for d in received if d not in decided]
    res.check(
        "every call the upstream received has a decision record in some replica's log",
        bool(received) and not missing,
        f"{len(received)} calls received, {len(missing)} without a record",
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=16.0, help="length of the load (the kill is half way)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conformance-fleet-"))
    res = Results()
    procs: list[Any] = []
    try:
        policy_dir(work)
        redis = start_redis(work / "redis")
        procs.append(redis)
        rec_port = free_port()
        record_file = work / "upstream.jsonl"
        rec = subprocess.Popen(
            [*RECORDER, "--http", str(rec_port)],
            env={**os.environ, "RECORD_FILE": str(record_file)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(Proc(rec, rec_port))
        ports = {f"r{i}": free_port() for i in (1, 2, 3)}
        nginx: Proc = start_nginx(work / "nginx", list(ports.values()))
        procs.append(nginx)
        hosts = [f"127.0.0.1:{p}" for p in [nginx.port, *ports.values()]]
        replicas: dict[str, RunningGateway] = {}
        for rid, port in ports.items():
            replicas[rid] = start_replica(work, rid, replica_config(work, rid, port, redis.port, hosts, rec_port), port)
            procs.append(replicas[rid])
        time.sleep(TTL_S / 3 + 1)  # every replica has seen the others
        url = f"http://127.0.0.1:{nginx.port}/mcp"
        anyio.run(limit_check, url, res, replicas)
        anyio.run(load, url, res, replicas, args.seconds)
        audit_check(record_file, res, replicas)
    except Exception as exc:
        res.check("the fleet ran", False, f"{type(exc).__name__}: {exc}")
    finally:
        for p in reversed(procs):
            p.stop()
    print(f"{res.passed} passed, {res.failed} failed")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
