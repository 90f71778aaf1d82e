"""Containment, through the built-in shell: what an allowed tool runs sees only what its profile grants.

A few attempts beside the full battery (``conformance/run containment``): the gateway user's SSH key (a decoy
in the gateway's $HOME), /etc/shadow, another agent's workspace, the gateway's environment; the answer size
bound (50 MB of output against max_output_bytes = 64 KiB); and the per-agent workspace quota. Controls: the
agent's own workspace file is read back, a granted path is listed, a small output comes back whole.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from conformance.security.framework import (
    Gateway,
    NotYet,
    Raw,
    attempt,
    control,
    hold,
    ok_result,
    result_text,
)
from conformance.security.framework import start as launch

CLS = "containment"
UID_BASE = 320000
ANSWER_BOUND = 256 * 1024
QUOTA_MB = 4


@dataclass
class Ctx:
    g: Gateway
    home: Path
    values: dict[str, str] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)

    def stop(self) -> None:
        self.g.stop()


def containment_fields() -> set[str]:
    from gateway.containment.settings import ContainmentConfig

    return set(ContainmentConfig.model_fields)


def start(work: Path) -> Ctx:
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o711)
    rand = secrets.token_hex(4)
    home = work / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_rsa"
    key.write_text(f"-----BEGIN KEY----- SSH-{rand}\n")
    os.chmod(key, 0o644)  # world-readable on purpose: only the sandbox may stop it
    for p in (work, home, home / ".ssh"):
        os.chmod(p, 0o755)
    known = containment_fields()
    wanted = {"max_output_bytes": 65536, "max_workspace_mb": QUOTA_MB}
    settings = "\n".join(f"{k} = {v}" for k, v in wanted.items() if k in known)
    extra = f"""
[containment]
workspace_root = "{work}/workspaces"
uid_base = {UID_BASE}
uid_count = 1000
{settings}

[containment.profiles.box]
tier = "sandbox"
read_only = ["/usr", "/etc/ssl"]
read_write = ["{{workspace}}"]
env = {{ LANG = "C.UTF-8", PATH = "/usr/bin:/bin", HOME = "{{workspace}}" }}
memory_mb = 256
pids = 64
cpu_seconds = 20
timeout_s = 30
max_file_mb = 8
"""
    ups = '[[upstreams]]\nname = "sh"\ntransport = "builtin"\ntools = "shell"\ncontainment = "box"\n'
    secret = f"GW-SECRET-{rand}"
    g = launch(work, ups, extra=extra, env={"HOME": str(home), "SEC_GATEWAY_SECRET": secret})
    ctx = Ctx(g, home, known=known)
    ctx.values = {
        "SSH": f"SSH-{rand}",
        "SECRET": secret,
        "WS_ROOT": f"{work}/workspaces",
        "HOME": str(home),
        "ROOT_MARK": f"ROOT-FILE-{rand}",
    }
    return ctx


async def run(raw: Raw, sid: str, command: str) -> tuple[bool, str, int]:
    r = await raw.tool("alice", sid, "sh__run", {"command": command})
    return ok_result(r), result_text(r), len(r.content)


async def own_file_control(raw: Raw, sid: str) -> None:
    m = "OWN-" + secrets.token_hex(4)
    await run(raw, sid, f"echo {m} > own.txt")
    ok, text, _ = await run(raw, sid, "cat own.txt")
    control(ok and m in text, f"the agent cannot read back its own file: {text[:100]}")


def reach(aid: str, title: str, commands: list[str], secret_key: str) -> None:
    async def go(ctx: Ctx) -> str:
        async with Raw(ctx.g, timeout=120) as raw:
            if secret_key == "ROOT_MARK":
                rsid = await raw.open("root")
                r = await raw.tool("root", rsid, "sh__run", {"command": f"echo {ctx.values['ROOT_MARK']} > r.txt"})
                control(ok_result(r), "root could not write its file")
                control((Path(ctx.values["WS_ROOT"]) / "root" / "r.txt").exists(), "root's file is not on disk")
            sid = await raw.open("alice")
            await own_file_control(raw, sid)
            seen = []
            for c in commands:
                for k, v in ctx.values.items():
                    c = c.replace("{" + k + "}", v)
                _ok, text, _ = await run(raw, sid, c)
                hold(ctx.values[secret_key] not in text, f"{c!r} read it")
                seen.append(text.strip().splitlines()[-1][:40] if text.strip() else "(nothing)")
        return "; ".join(seen)[:150]

    attempt(CLS, aid, title)(go)


reach(
    "ssh-key",
    "the gateway user's ~/.ssh/id_rsa is out of reach",
    ["cat {HOME}/.ssh/id_rsa", "ls -la {HOME}/.ssh"],
    "SSH",
)
reach(
    "other-workspace",
    "another agent's workspace is out of reach",
    ["cat {WS_ROOT}/root/r.txt", "cat ../root/r.txt", "grep -r ROOT-FILE {WS_ROOT}"],
    "ROOT_MARK",
)
reach(
    "gateway-environ",
    "the gateway's environment is out of reach",
    ["cat /proc/1/environ", "env", "grep -a -r GW-SECRET /proc/self/environ /proc/1/environ"],
    "SECRET",
)


@attempt(CLS, "etc-shadow", "/etc/shadow is out of reach")
async def shadow(ctx: Ctx) -> str:
    async with Raw(ctx.g, timeout=120) as raw:
        sid = await raw.open("alice")
        ok, text, _ = await run(raw, sid, "ls /etc/ssl")
        control(ok and text.strip(), f"a granted path (/etc/ssl) cannot be listed: {text[:80]}")
        ok, text, _ = await run(raw, sid, "cat /etc/shadow")
        hold("root:" not in text, "/etc/shadow was read")
    return text.strip().splitlines()[-1][:80] if text.strip() else "(nothing)"


@attempt(CLS, "answer-bound", "50 MB of output comes back as an answer of bounded size (max_output_bytes 64 KiB)")
async def answer_bound(ctx: Ctx) -> str:
    async with Raw(ctx.g, timeout=120) as raw:
        sid = await raw.open("alice")
        ok, text, size = await run(raw, sid, "echo small-output")
        control(ok and "small-output" in text, f"a small output did not come back: {text[:80]}")
        ok, text, size = await run(raw, sid, "seq 1 7000000")
        control("1\n2\n3" in text or size > 1000, "the big command did not run")
        hold(size <= ANSWER_BOUND, f"a {size}-byte answer")
    return f"a {size}-byte answer"


@attempt(CLS, "workspace-quota", f"an agent cannot write past max_workspace_mb = {QUOTA_MB} in several calls")
async def quota(ctx: Ctx) -> str:
    if "max_workspace_mb" not in ctx.known:
        raise NotYet("no [containment] max_workspace_mb")
    if os.geteuid() != 0:
        raise NotYet("the workspace quota needs root")
    ws = Path(ctx.values["WS_ROOT"]) / "alice"
    async with Raw(ctx.g, timeout=120) as raw:
        sid = await raw.open("alice")
        ok, text, _ = await run(raw, sid, "dd if=/dev/zero of=q0 bs=1M count=1")
        control(ok and (ws / "q0").exists(), f"a 1 MB write failed: {text[:100]}")
        refusals = []
        for i in range(1, 5):
            ok, text, _ = await run(raw, sid, f"dd if=/dev/zero of=q{i} bs=1M count=3")
            if not ok or "No space" in text or "quota" in text.lower():
                refusals.append(text.strip().splitlines()[-1][:60] if text.strip() else "refused")
    used = sum(p.stat().st_size for p in ws.rglob("*") if p.is_file()) / (1 << 20)
    hold(used <= QUOTA_MB + 0.5, f"{used:.1f} MB written into a {QUOTA_MB} MB workspace")
    hold(refusals, "no call was refused")
    return f"{used:.1f} MB used; refused: {refusals[0]}"
