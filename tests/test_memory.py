"""Memory: a gateway loads only the libraries its configuration uses (issue 13, <= 100 MB RSS at 200 sessions).

regopy (rego-cpp, ~12 MB resident), redis (~7 MB), PyJWT, aiohttp and the OpenTelemetry SDK each cost the
process megabytes for as long as it lives; the default configuration (embedded RVM engine, API keys, no fleet, no
bundles, no tracing) needs none of them. The gateway runs as a real process through a wrapper that writes its
``sys.modules`` on SIGUSR1, after serving a real session and call; no RSS threshold is asserted (that would be
flaky), only which modules were loaded.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import ECHO, KEYS, ProbedGateway, mcp_client, probed_gateway

ECHO_UPSTREAM = f'[[upstreams]]\nname = "echo"\ntransport = "stdio"\ncommand = {json.dumps(ECHO)}\n'


def one_echo_call(gw: ProbedGateway) -> None:
    """One session and one allowed call through the gateway, with the real SDK client."""

    async def call() -> None:
        async with mcp_client(gw.url, KEYS["ci-bot"][2]) as client:
            result = await client.call_tool("echo__echo", {"text": "hi"})
            assert not result.is_error, result
            assert result.content[0].text == "hi"  # type: ignore[union-attr]

    anyio.run(call)


# Libraries only some configurations need: engine = "regopy", engine = "opa", [fleet] / [[limits]] in Redis,
# [identity.jwt] or signed bundles, [tracing].
NOT_BY_DEFAULT = (
    "regopy",
    "redis",
    "jwt",
    "aiohttp",
    "opa_client",
    "opentelemetry.sdk",
    "gateway.policy.embedded",
    # httpx2's client and transports, and httpcore2 under them: only OAuth upstreams, bundles, decision-log shipping
    # and the fleet's hops use them (gateway.sdk_adapter.HTTPX2_BARE; the SSE parser alone is imported).
    "httpcore2",
    "httpx2._client",
    "trio",  # the gateway serves on asyncio: httpcore2 would import trio (and attrs) only because it is installed
    # The SDK's package __init__ files import these (gateway.sdk_adapter.bare_package): MCPServer and the SDK's
    # Client, cryptography through the SDK's server-side OAuth, ~10 MB resident.
    "cryptography",
    "mcp.server.mcpserver",
    "mcp.client.client",
)

# The policy, audit and lock subcommands' modules: imported when their command is named, never by serve.
CLI_ONLY = ("gateway.cli_policy", "gateway.cli_lock", "gateway.cli_diff")

MODULES = """
import sys
def probe():
    return "\\n".join(sorted(name for name, module in sys.modules.items() if module is not None))
"""


def loaded_modules(tmp_path: Path, engine: str = "embedded") -> tuple[set[str], str]:
    """The modules a gateway with the test default configuration had loaded after one session and one call; and its
    /proc/PID/maps while it served."""
    with probed_gateway(tmp_path, ECHO_UPSTREAM, MODULES, engine) as gw:
        one_echo_call(gw)
        maps = Path(f"/proc/{gw.proc.pid}/maps").read_text()
        modules = set(gw.probe().split())
    return modules, maps


def test_default_gateway_loads_no_optional_library(tmp_path: Path) -> None:
    modules, maps = loaded_modules(tmp_path)
    assert "gateway.policy.rvm" in modules  # the wrapper saw the serving gateway's modules
    assert [m for m in NOT_BY_DEFAULT if m in modules] == []
    assert [m for m in CLI_ONLY if m in modules] == []
    assert "regopy" not in maps  # rego-cpp's shared library is not mapped into the process either


def test_regopy_engine_still_loads_regopy(tmp_path: Path) -> None:
    """The lazy imports move the cost to the configurations that need it; the regopy engine still serves."""
    modules, maps = loaded_modules(tmp_path, engine="regopy")
    assert {"regopy", "gateway.policy.embedded"} <= modules
    assert "regopy" in maps


def test_lint_builtin_list_matches_installed_regopy() -> None:
    """The lint's constant list of missing built-ins (kept so the default gateway never loads regopy) is what the
    installed rego-cpp says it implements."""
    from regopy import Interpreter

    from gateway.policy.lint import _OPA_BUILTINS, _SPECIAL, supported_builtins

    probe = Interpreter()
    assert supported_builtins() == frozenset(n for n in _OPA_BUILTINS if probe.is_builtin(n)) | _SPECIAL


COUNTER = """
import gc
def probe():
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is dict and str(o.get("name", "")).startswith("echo__tool_"))
"""


def test_an_open_session_does_not_keep_its_tools_list_answer(tmp_path: Path) -> None:
    """The SDK's per-session message router keeps the last message it sent alive until the next one; with calls on
    the fast path that is the session's tools/list answer (~1 KB a tool). The gateway empties the lists of an
    answer once it is on the wire (``gateway.http.sessions.hand_over``): the live tool entries of a 100-tool list
    do not grow with the sessions that listed it and stay open. Each answer is still whole, listed again too."""
    upstream = f'[[upstreams]]\nname = "echo"\ntransport = "stdio"\ncommand = {json.dumps([*ECHO, "--tools", "100"])}\n'

    async def hold(gw: ProbedGateway, sessions: int) -> tuple[int, int]:
        url = gw.url
        async with mcp_client(url, KEYS["ci-bot"][2]) as first:
            assert len((await first.list_tools()).tools) == 100
            one = int(await anyio.to_thread.run_sync(gw.probe))
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(sessions):
                    client = await stack.enter_async_context(mcp_client(url, KEYS["ci-bot"][2]))
                    for _ in range(2):  # the second answer is whole too: nothing the gateway keeps was emptied
                        assert len((await client.list_tools()).tools) == 100
                return one, int(await anyio.to_thread.run_sync(gw.probe))

    with probed_gateway(tmp_path, upstream, COUNTER) as gw:
        one, many = anyio.run(hold, gw, 5)
    assert many - one < 100, (one, many)  # without the release: +99 entries per session that listed


ALLOCATOR = """
import os, sys
def probe():
    return f"{'regorus' in sys.modules} {os.environ.get('MIMALLOC_ARENA_EAGER_COMMIT')}"
"""


def test_regorus_allocator_commits_memory_on_demand(tmp_path: Path) -> None:
    """regorus's mimalloc commits its first arena whole at load unless ``MIMALLOC_ARENA_EAGER_COMMIT=0`` is in the
    environment then (~8 MB resident, in transparent huge pages); gateway/policy/__init__.py sets it before any
    policy module imports regorus. The serving gateway has regorus loaded with the option set."""
    with probed_gateway(tmp_path, ECHO_UPSTREAM, ALLOCATOR) as gw:
        assert gw.probe() == "True 0"


DEFERRED = """
def probe():
    import mcp.shared.auth
    import mcp_types
    return " ".join(str(m.__pydantic_complete__) for m in (mcp.shared.auth.OAuthMetadata, mcp_types.ElicitRequest))
"""


def test_sdk_models_the_gateway_never_uses_are_never_built(tmp_path: Path) -> None:
    """The SDK's pydantic models are built when first used (``sdk_adapter.defer_model_builds``): after a session and
    a call, the OAuth server's metadata model and a request the gateway never receives are still unbuilt."""
    with probed_gateway(tmp_path, ECHO_UPSTREAM, DEFERRED) as gw:
        one_echo_call(gw)
        assert gw.probe() == "False False"


FREED = """
import sys
from gateway.memory import release_free_memory

def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024

blocks = [bytes(4000) + bytes([i % 256]) for i in range(20_000)]  # ~80 MB from malloc, not the Python allocator
pin = bytes(9000)  # allocated last (a size no freed chunk fits), at the top: glibc cannot shrink the heap past it
del blocks
before = rss_mb()
assert release_free_memory()
print(before - rss_mb())
"""


def test_release_free_memory_gives_freed_pages_back() -> None:
    """What a program freed in the middle of glibc's heap stays resident until ``malloc_trim``: the gateway calls it
    once start-up (policy compilation) is done."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FREED], capture_output=True, text=True, check=True).stdout
    assert float(out) > 40, out  # MB given back


ARENAS = """
import ctypes, sys, threading
from gateway.memory import share_one_arena

if sys.argv[1] == "shared":
    assert share_one_arena()

def work():
    global kept
    kept = [bytes(50_000) for _ in range(40)]  # from malloc (above Python's small-object size, below mmap's)

t = threading.Thread(target=work)
t.start()
t.join()
ctypes.CDLL(None).malloc_stats()  # per arena, on stderr
"""


@pytest.mark.parametrize("mode", ["shared", "default"])
def test_threads_allocate_from_the_main_arena(mode: str) -> None:
    """glibc gives a thread that allocates an arena of its own, whose freed memory stays resident; the gateway
    calls ``share_one_arena`` before its first thread. Without the call the thread gets a second arena (so the
    check can fail)."""
    import subprocess
    import sys

    err = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True).stderr
    arenas = [line for line in err.splitlines() if line.startswith("Arena ")]
    assert len(arenas) == (1 if mode == "shared" else 2), err


HEAPS = """
import ctypes, os, threading
def probe():
    kept = []
    worker = threading.Thread(target=lambda: kept.extend(bytes(50_000) for _ in range(40)))  # from malloc
    worker.start()
    worker.join()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    path = os.environ["GATEWAY_PROBE_OUT"] + ".heaps"
    out = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, out)  # glibc's per-arena statistics, as XML
    libc.fclose(out)
    with open(path) as f:
        return f.read().count("<heap nr=")
"""


def test_a_serving_gateway_s_threads_share_the_main_arena(tmp_path: Path) -> None:
    """In a gateway that has started (the policy compiled on its thread) and served a call, a new thread that
    allocates still lands in the one arena: ``serve`` made the call before anything started a thread."""
    with probed_gateway(tmp_path, ECHO_UPSTREAM, HEAPS) as gw:
        one_echo_call(gw)
        assert gw.probe() == "1"


def test_serve_shares_one_arena_before_any_thread() -> None:
    """The call sits at the start of ``serve``, before the config is loaded and the policy compiled on a thread."""
    import inspect

    from gateway import cli

    source = inspect.getsource(cli.serve.callback)  # type: ignore[arg-type]
    assert source.index("share_one_arena()") < source.index("_load(config_path)") < source.index("Gateway(cfg)")


def test_a_request_s_connection_is_not_held_by_what_the_sdk_keeps() -> None:
    """The SDK keeps a session's last routed message, and with it the request it came on (its receive and send),
    until the next message. The dispatcher hands the SDK a receive and send cut from the connection once the
    request is over (``gateway.http.dispatch.Detachable``): what is kept then holds neither the connection's
    callables nor, through them, the closed connection."""
    import gc
    import weakref

    from gateway.http.authenticate import AGENT_KEY
    from gateway.http.dispatch import VIEW_KEY, Dispatch
    from gateway.http.headers import ParseHeaders
    from gateway.http.sessions import SessionBinding
    from gateway.identity import Agent

    kept: list[Any] = []

    async def sdk(scope: Any, receive: Any, send: Any) -> None:
        kept[:] = [receive, send]  # as the SDK's router keeps its last message's request
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    # A GET without a body never reaches the fast path: the dispatcher hands it to the SDK.
    binding = SessionBinding(Dispatch(None, {None: sdk}), lambda: (), 10, lambda _: None)  # type: ignore[arg-type]

    async def with_agent(scope: Any, receive: Any, send: Any) -> None:
        scope["state"][AGENT_KEY] = Agent("ci-bot", "platform", ("ci",), "api_key")
        scope["state"][VIEW_KEY] = None
        await binding(scope, receive, send)

    sent: list[Any] = []

    class Connection:  # stands for uvicorn's request cycle: its receive and send are its bound methods
        async def receive(self) -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(self, message: Any) -> None:
            sent.append(message["type"])

    async def one_request() -> weakref.ref[Connection]:
        conn = Connection()
        scope = {"type": "http", "method": "GET", "path": "/mcp", "headers": [(b"accept", b"text/event-stream")]}
        await ParseHeaders(with_agent)(scope | {"state": {}}, conn.receive, conn.send)
        return weakref.ref(conn)

    gc.disable()  # freed by reference counting, not by a collection
    try:
        conn = anyio.run(one_request)
        assert sent == ["http.response.start", "http.response.body"]
        assert conn() is None, "the connection is still held through what the SDK kept"
        receive, send = kept
        assert anyio.run(receive) == {"type": "http.disconnect"}
        anyio.run(send, {"type": "http.response.body", "body": b"late"})
        assert sent == ["http.response.start", "http.response.body"]  # dropped: the request is over
    finally:
        gc.enable()


def test_the_policy_is_compiled_on_a_thread_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """regorus's allocator keeps what a thread freed committed for that thread: the start-up compilation runs on a
    thread of its own (``rvm.on_own_thread``), which hands its heap back when it ends, not on the event loop's."""
    import threading

    from gateway.policy import rvm

    seen: list[str] = []
    compile_rvm = rvm.compile_rvm

    def spy(*args: Any) -> rvm.RvmPolicy:
        seen.append(threading.current_thread().name)
        return compile_rvm(*args)

    monkeypatch.setattr(rvm, "compile_rvm", spy)
    engine = rvm.RvmEngine(Path(__file__).parent.parent / "rego", "gateway/decision", 1000)
    assert seen == ["policy-compile_0"]  # the compile pool's one thread
    assert engine.revision
    with pytest.raises(Exception, match="missing"):  # the compilation's error reaches the caller
        rvm.on_own_thread(compile_rvm, tmp_path / "missing", "gateway/decision")
