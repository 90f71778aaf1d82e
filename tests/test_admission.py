"""The admission stage through a real gateway and the real SDK client: a hidden item answers exactly as a missing
one and costs the same work, notifications about hidden items never reach the agent, every request gets its
records whatever its content, long names are refused, and an outcome that cannot be recorded withholds the result.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.conftest import KEYS, REPO, RunningGateway, default_config, free_port, start_gateway, stdio_upstream

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]
FIXTURE = [sys.executable, str(REPO / "conformance" / "mcp" / "fixture.py")]
RECORDER = [sys.executable, str(REPO / "tests" / "fixtures" / "recording_server.py")]

# The researcher may see nothing of the upstreams "fixture" and "hidden", nor the resource rec://other; it sees
# (but may not call) fixture's test_simple_text. Everyone else may do everything.
POLICY = """package gateway
import rego.v1

hidden_server(s) if s in {"fixture", "hidden"}

hidden_resource if {
	input.action == "resources/list"
	input.resource == "rec://other"
}

default decision := {"allow": false, "reasons": ["no rule allows this request"]}

decision := {"allow": true, "reasons": []} if input.agent.id != "researcher"

decision := {"allow": true, "reasons": []} if {
	input.agent.id == "researcher"
	not hidden_server(input.server)
	not hidden_resource
}

decision := {"allow": true, "reasons": []} if {
	input.agent.id == "researcher"
	input.action == "tools/list"
	input.server == "fixture"
	input.tool == "test_simple_text"
}
"""


def key(agent: str) -> str:
    return KEYS[agent][2]


def write_policy(workdir: Path) -> Path:
    policy = workdir / "rego"
    policy.mkdir()
    (policy / "p.rego").write_text(POLICY)
    return policy


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("admission")
    port = free_port()
    upstreams = (
        stdio_upstream("fixture", FIXTURE)
        + stdio_upstream("hidden", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "hidden.jsonl"}" }}\n')
        + stdio_upstream(
            "own", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "own.jsonl"}" }}\nsession_mode = "per_session"\n'
        )
    )
    config = default_config(port, workdir, upstreams, policy=write_policy(workdir))
    gw = start_gateway(workdir, config, port, ready_timeout=120)
    yield gw
    gw.stop()


@asynccontextmanager
async def client(url: str, agent: str, **callbacks: Any) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key(agent)}"}, timeout=30)
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None, **callbacks) as c:
        yield c


def metrics_text(gw: RunningGateway) -> str:
    base = getattr(gw, "admin_base", gw.base)
    return httpx2.get(base + "/metrics", timeout=10).text


def metric(gw: RunningGateway, name: str) -> float:
    total = 0.0
    for line in metrics_text(gw).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def ignore_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


async def refusal(gw: RunningGateway, c: Client, call: Any, name: str) -> tuple[Any, float, int]:
    """The error a request gets (with the name it named replaced), the engine evaluations it cost, and the
    audit records it left."""
    evaluations = metric(gw, "mcp_gateway_policy_decision_seconds_count")
    records = len(gw.audit_records())
    with pytest.raises(MCPError) as err:
        await call
    e = err.value
    answer = (e.code, e.message.replace(name, "<name>"), e.data)
    return (
        answer,
        metric(gw, "mcp_gateway_policy_decision_seconds_count") - evaluations,
        (len(gw.audit_records()) - records),
    )


async def test_a_hidden_item_answers_as_a_missing_one_with_the_same_work(gateway: RunningGateway) -> None:
    """Each pair names a hidden item and a missing one of the same kind: same error (modulo the name), same
    number of engine evaluations, same number of audit records (a decision and an outcome each)."""
    async with client(gateway.url, "researcher") as c:
        await c.list_tools()  # warms the visibility cache with the hidden items: the answer must not depend on it
        pairs: list[tuple[str, Any, Any, str, str]] = [
            ("tools/call", lambda n: c.call_tool(n, {}), None, "fixture__test_image_content", "fixture__nope"),
            (
                "tools/call (SDK path)",
                lambda n: c.call_tool(n, {}, progress_callback=ignore_progress),
                None,
                "fixture__test_image_content",
                "fixture__nope",
            ),
            ("prompts/get", lambda n: c.get_prompt(n, {}), None, "fixture__test_simple_prompt", "fixture__nope"),
            ("resources/read", lambda n: c.read_resource(n), None, "test://static-text", "test://nope"),
            ("resources/subscribe", lambda n: c.subscribe_resource(n), None, "test://watched-resource", "test://nope"),
            (
                "completion/complete prompt",
                lambda n: c.complete(types.PromptReference(type="ref/prompt", name=n), {"name": "arg1", "value": "pa"}),
                None,
                "fixture__test_prompt_with_arguments",
                "fixture__nope",
            ),
            (
                "completion/complete resource",
                lambda n: c.complete(
                    types.ResourceTemplateReference(type="ref/resource", uri=n), {"name": "id", "value": "1"}
                ),
                None,
                "test://template/{id}/data",
                "test://nope/{id}",
            ),
        ]
        for what, make, _, hidden, missing in pairs:
            for _ in range(2):  # the second round runs on warm caches
                got_hidden = await refusal(gateway, c, make(hidden), hidden)
                got_missing = await refusal(gateway, c, make(missing), missing)
                assert got_hidden == got_missing, what
                assert got_hidden[2] == 2, what  # a decision record and an outcome record
        # The positive control: a tool the researcher sees but may not call is denied, not unknown.
        denied = await c.call_tool("fixture__test_simple_text", {})
        assert denied.is_error and "Denied by policy" in denied.content[0].text  # type: ignore[union-attr]
    async with client(gateway.url, "ci-bot") as c:  # and for an agent that sees them, the items are there
        assert (await c.call_tool("fixture__test_simple_text", {})).content[0].text  # type: ignore[union-attr]
        await c.subscribe_resource("test://watched-resource")


def test_a_hidden_upstream_endpoint_answers_as_a_missing_one(gateway: RunningGateway) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    accept = {"Accept": "application/json, text/event-stream"}

    def post(path: str, agent: str | None) -> httpx2.Response:
        auth = {"Authorization": f"Bearer {key(agent)}"} if agent else {}
        return httpx2.post(gateway.url + path, json=init, headers={**accept, **auth}, timeout=30)

    assert post("/hidden", "ci-bot").status_code == 200  # the positive control: it exists
    hidden, missing = post("/hidden", "researcher"), post("/nope", "researcher")
    assert (hidden.status_code, hidden.content) == (missing.status_code, missing.content) and hidden.status_code == 404
    hidden, missing = post("/hidden", None), post("/nope", None)  # and without credentials
    assert (hidden.status_code, hidden.content) == (missing.status_code, missing.content) and hidden.status_code == 401


async def test_templates_are_filtered_like_resources(gateway: RunningGateway) -> None:
    async with client(gateway.url, "researcher") as c:
        assert (await c.list_resource_templates()).resource_templates == []
        assert "rec://other" not in {str(r.uri) for r in (await c.list_resources()).resources}
    async with client(gateway.url, "ci-bot") as c:
        templates = (await c.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["test://template/{id}/data"]
        read = await c.read_resource("test://template/7/data")  # a URI of a template is routed
        assert '"id": "7"' in read.contents[0].text  # type: ignore[union-attr]


async def test_notifications_about_hidden_items_do_not_reach_the_agent(gateway: RunningGateway) -> None:
    got: list[tuple[str, Any]] = []

    async def on_message(message: Any) -> None:
        if not isinstance(message, Exception):
            message = getattr(message, "root", message)
            if getattr(message, "method", None):
                got.append((message.method, getattr(message.params, "uri", None)))

    async with client(gateway.url, "researcher", message_handler=on_message) as r, client(gateway.url, "ci-bot") as c:
        await r.list_tools()
        for uri in ("rec://other", "rec://watched"):  # from its own per-session upstream: hidden, then visible
            await r.call_tool("own__notify", {"method": "notifications/resources/updated", "params": {"uri": uri}})
        # A shared upstream the researcher sees nothing of says its tools changed (ci-bot makes it say so) ...
        await c.call_tool("hidden__notify", {"method": "notifications/tools/list_changed"})
        # ... and then one it sees does (the positive control, which also says when to stop waiting).
        await r.call_tool("own__notify", {"method": "notifications/tools/list_changed"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ("notifications/tools/list_changed", None) not in got:
            await anyio.sleep(0.1)
        await anyio.sleep(0.5)
    assert ("notifications/resources/updated", "rec://watched") in got
    assert ("notifications/resources/updated", "rec://other") not in got
    assert got.count(("notifications/tools/list_changed", None)) == 1, got


async def test_an_integer_beyond_64_bits_gets_an_answer_and_its_records(gateway: RunningGateway) -> None:
    """Forwarded, refused (the policy cannot see such a number) or failed: whatever happens, the agent gets an
    answer that names the decision id and no internal exception text, and the audit log has both records."""
    async with client(gateway.url, "ci-bot") as c:
        for progress in (ignore_progress, None):  # the SDK path, and whatever path a plain call takes
            records = len(gateway.audit_records())
            try:
                result = await c.call_tool("hidden__echo", {"text": "big", "n": 2**70}, progress_callback=progress)
                answer = result.content[0].text  # type: ignore[union-attr]
                assert answer == "big" if not result.is_error else "decision id" in answer
            except MCPError as exc:
                assert re.search(r"decision id [0-9a-f-]{36}", exc.message) and "64-bit" not in exc.message
            new = gateway.audit_records()[records:]
            decision = next(r for r in new if r["type"] == "decision" and r["action"] == "tools/call")
            assert decision["arguments_digest"]
            assert any(r["type"] == "outcome" and r["decision_id"] == decision["decision_id"] for r in new)


async def test_names_past_128_characters_are_refused_before_any_work(gateway: RunningGateway) -> None:
    long_name = "fixture__" + "x" * 200_000
    async with client(gateway.url, "ci-bot") as c:
        evaluations = metric(gateway, "mcp_gateway_policy_decision_seconds_count")
        for call in (
            c.call_tool(long_name, {}),
            c.call_tool(long_name, {}, progress_callback=ignore_progress),
            c.get_prompt(long_name, {}),
        ):
            with pytest.raises(MCPError) as err:
                await call
            assert err.value.code == types.INVALID_PARAMS and "longer than 128 characters" in err.value.message
        assert metric(gateway, "mcp_gateway_policy_decision_seconds_count") == evaluations
        assert (await c.call_tool("fixture__" + "test_simple_text", {})).content  # the positive control
    size = max(len(line) for line in gateway.audit.read_bytes().splitlines())
    assert size < 20_000, "a long name was written whole into the audit log"


async def test_progress_is_bound_to_its_call_and_well_formed(gateway: RunningGateway) -> None:
    """Progress is covered by its call's decision: it reaches the agent that made the call, on that call's token,
    and only as numbers (a hostile upstream's malformed progress is dropped, its call still answered)."""
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    def progress(**params: Any) -> str:
        import json

        # The fixture writes {id} as this call's JSON id (an integer); the gateway's progress token is "gw-<id>".
        return json.dumps(
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "gw-{id}", **params}}
        )

    lines = [
        progress(progress=True),
        progress(progress="1"),
        progress(progress=1, total="many"),
        progress(progress=2, total=4, message={"not": "text"}),
        progress(progress=3, total=4, message="three"),
    ]
    async with client(gateway.url, "ci-bot") as c:
        result = await c.call_tool("hidden__raw", {"lines": lines}, progress_callback=on_progress)
        assert not result.is_error
    assert seen == [(2, 4, None), (3, 4, "three")]


# --- an outcome that cannot be recorded --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the file system up to its last byte."""
    path = disk / "filler"
    with path.open("wb", buffering=0) as f:
        chunk = b"\0" * 65536
        while chunk:
            try:
                f.write(chunk)
            except OSError:
                chunk = chunk[: len(chunk) // 2]
    return path


async def test_an_outcome_that_cannot_be_recorded_withholds_the_result(small_disk: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "gw"
    workdir.mkdir()
    port = free_port()
    config = default_config(
        port,
        workdir,
        stdio_upstream("rec", RECORDER, 'env = { RECORD_FILE = "/dev/null" }\n'),
        policy=write_policy(workdir),
    )
    config = config.replace(f'path = "{workdir / "audit.jsonl"}"', f'path = "{small_disk / "audit.jsonl"}"')
    gw = start_gateway(workdir, config, port, ready_timeout=120)
    audit = small_disk / "audit.jsonl"
    try:
        async with client(gw.url, "ci-bot") as c:
            for _ in range(2):  # the positive control; the second one's decision record is measured
                assert (await c.call_tool("rec__sleep", {"seconds": 0, "p": 1})).content
            failures = metric(gw, "mcp_gateway_audit_write_failures_total")
            # A file system allocates whole pages: a full one still takes a record into the last page of the
            # audit file. So the call's decision record is sized (by the length of an argument's name, which
            # the record keeps) to end exactly on a page boundary: then the outcome record finds no room.
            probe = [line for line in audit.read_bytes().splitlines(keepends=True) if b'"decision"' in line][-1]
            pad = 1 + (-(audit.stat().st_size + len(probe))) % 4096
            result: list[Any] = []

            async def call() -> None:
                try:
                    result.append(await c.call_tool("rec__sleep", {"seconds": 3, "p" * pad: 1}))
                except MCPError as exc:
                    result.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                deadline = time.monotonic() + 10  # wait for the call's decision record, then fill the disk
                while b"p" * pad not in audit.read_bytes() and time.monotonic() < deadline:
                    await anyio.sleep(0.05)
                assert audit.stat().st_size % 4096 == 0, "the decision record did not end on a page boundary"
                filler = fill(small_disk)
        [err] = result
        assert isinstance(err, MCPError), "the result of a call whose outcome was not recorded reached the agent"
        decision_ids = re.findall(r"decision id ([0-9a-f-]{36})", err.message)
        assert decision_ids and "withheld" in err.message
        records = [r for r in map(_json, (small_disk / "audit.jsonl").read_bytes().splitlines())]
        assert any(r["type"] == "decision" and r["decision_id"] == decision_ids[0] for r in records)
        assert not any(r["type"] == "outcome" and r["decision_id"] == decision_ids[0] for r in records)
        assert metric(gw, "mcp_gateway_audit_write_failures_total") >= failures + 1
        filler.unlink()
        async with client(gw.url, "ci-bot") as c:  # with room again, calls go on
            assert (await c.call_tool("rec__echo", {"text": "after"})).content
    finally:
        gw.stop()
        os.sync()


def _json(line: bytes) -> dict[str, Any]:
    import orjson

    return dict(orjson.loads(line))
