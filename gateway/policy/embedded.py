"""The regopy engine (``engine = "regopy"``, the embedded default before regorus): rego-cpp in-process.

A policy revision is compiled once into a bundle; each worker thread keeps its own evaluator (sharing one
between threads crashes rego-cpp) and evaluates the shared bundle with strict built-in errors, so a failing
built-in denies instead of quietly making a deny rule undefined.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import queue
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
from regopy import Interpreter
from regopy.rego_shared import RegoError

from gateway.policy.decision import Decision, PolicyError
from gateway.policy.inputs import input_shape, prune
from gateway.policy.lint import _mask
from gateway.policy.lint import check as lint
from gateway.policy.loader import PolicySource, load_policy

_UNREADABLE = (
    "the policy did not allow this call once its control characters were read as they are "
    "(the embedded engine reads such strings two ways, and both must allow)"
)
_CONTROL = re.compile(r"(?<!\\)(?:\\\\)*\\[bfnrtu]")
"""A control character in orjson's output: an odd run of backslashes, then the letter of its escape (orjson
escapes only ``"``, ``\\`` and U+0000-U+001F, and spells only the last with ``\\u``)."""
_ERR = re.compile(r"\(error \d+:([^|]*)\|(\d+)\|(\d+)\s*\(errormsg \d+:(.*?)\)\s*\(errorast", re.S)


def _format_rego_error(exc: RegoError, source: PolicySource) -> list[str]:
    out = []
    for name, offset, _length, msg in _ERR.findall(str(exc)):
        if name in source.modules:
            out.append(f"{source.where(name, int(offset))}: {msg.strip()}")
        else:
            out.append(f"{source.root}: {msg.strip()}")
    return out or [f"{source.root}: {str(exc).strip()}"]


_DECISION_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")
_PRINTED_AT = re.compile(r"^-- (\S+?):(\d+):(\d+)\s*$", re.M)


@contextmanager
def _stdout_captured() -> Iterator[list[str]]:
    """rego-cpp prints some compile errors on stdout and returns a broken bundle instead of raising (evaluating
    that bundle crashes the process): capture what it prints so the error can be reported. Anything else written
    to stdout meanwhile is passed on afterwards, not lost."""
    captured: list[str] = []
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all: nothing to capture, errors are reported without rego-cpp's words
        yield captured
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield captured
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            captured.append(text)
            if text and "Errors:" not in text:
                sys.stdout.write(text)
                sys.stdout.flush()


def _printed_errors(text: str, source: PolicySource) -> list[str]:
    out = []
    for block in re.split(r"^-{8,}\s*$", text.replace("Errors:", "", 1), flags=re.M):
        lines = [ln for ln in block.strip().splitlines() if ln.strip() and not set(ln.strip()) <= {"~", "-"}]
        if not lines or lines[0].startswith("Pass "):
            continue
        where = _PRINTED_AT.search(block)
        if where and where.group(1) in source.modules:
            out.append(f"{source.where(where.group(1))}:{where.group(2)}:{where.group(3)}: {lines[0].strip()}")
        else:
            out.append(f"{source.root}: {lines[0].strip()} (the embedded engine gave no location)")
    return list(dict.fromkeys(out)) or [f"{source.root}: the embedded engine could not compile this policy"]


def canonical_literals(text: str) -> str:
    """The module with each double-quoted string literal spelt as orjson spells the input's strings.

    rego-cpp compares strings in their escaped spelling, so a literal ``"\\u00e9"`` never equalled an input
    ``"é"`` (orjson writes it as it is), nor ``"\\u000a"`` a newline (written ``\\n``): rules on such literals
    silently never matched. Literals are re-spelt before compiling; what they mean is unchanged (regex patterns
    included: they are unescaped once either way). A compile error on such a line may point a few columns off.
    """
    out, last = [], 0
    for lit in _mask(text)[1]:
        if lit.value is None or text[lit.start] != '"':
            continue
        try:
            spelt = orjson.dumps(lit.value).decode()
        except TypeError:  # a lone surrogate: left as written
            continue
        if spelt != text[lit.start : lit.end]:
            out += [text[last : lit.start], spelt]
            last = lit.end
    return "".join(out) + text[last:] if out else text


class CompiledPolicy:
    """One revision of the policy, compiled; immutable and shared by every evaluator thread."""

    fallback: tuple[str, ...] = ()

    def __init__(self, source: PolicySource, decision_path: str):
        if not _DECISION_PATH.fullmatch(decision_path):  # it becomes part of the query: never anything but a path
            raise PolicyError([f"decision {decision_path!r}: a rule path such as gateway/decision is expected"])
        self.source = source
        self.revision = source.revision
        self.decision_path = decision_path
        # Lint first: rego-cpp compiles calls to built-ins it lacks (failing only when one runs), and aborts the
        # whole process on some call names that are not built-ins at all ("io.jwt(x)"). Refuse both before it sees them.
        lint(source)
        builder = Interpreter()
        name = "(data)"
        try:
            with _stdout_captured() as printed:
                for name, text in source.modules.items():
                    builder.add_module(name, canonical_literals(text))
                name = "data.json"
                builder.add_data_json(orjson.dumps(source.data).decode())
                query = "x := data." + decision_path.replace("/", ".")
                self.bundle = builder.build(query, [decision_path])
        except RegoError as exc:
            raise PolicyError(_format_rego_error(exc, source)) from None
        except Exception as exc:  # regopy raises plain errors for some build failures
            raise PolicyError([f"{source.where(name)}: {exc}"]) from None
        if not self.bundle.ok():
            raise PolicyError(_printed_errors("".join(printed), source))
        self.input_shape = input_shape(source)
        """The parts of the input the policy reads: only those are handed to rego-cpp (it parses every node)."""

    def decide(self, evaluator: Interpreter, input: dict[str, Any]) -> Decision:
        """Decide; an input whose strings hold characters JSON escapes is read both ways, and allowed only if both
        readings allow.

        rego-cpp keeps strings in their JSON-escaped spelling. Comparisons with the policy's literals (``==``,
        ``contains``, ``startswith``, ``split``, data) are right that way, but ``regex.match``, ``count``,
        ``upper``, ``substring``... read a newline as backslash and ``n`` (a deny rule ``regex.match("[\\s;]", x)``
        missed ``"a\nb"``), and ``"`` or ``\\`` with a backslash before it (``count`` counts them twice, ``^"``
        never matches). Handed the same value as a built term (``set_input``), rego-cpp holds the real characters:
        the built-ins that missed them see them, while comparisons with literals holding escapes do not. No single
        reading is right for every rule, so an allow must hold on both. When the real-character reading fails
        (the built-ins that unescape their argument, such as glob.match or a regex pattern, can choke on a real
        backslash), a control character denies; a quote or backslash alone keeps the escaped reading's decision.
        """
        pruned = prune(input, self.input_shape)
        try:
            input_json = orjson.dumps(pruned).decode()
        except TypeError as exc:
            return Decision.failed(f"input not serialisable: {exc}", self.revision)
        decision = self.evaluate(evaluator, input_json)
        if not decision.allow or "\\" not in input_json:
            return decision
        raw = self._evaluate_raw(evaluator, pruned)
        if raw is None:
            control = _CONTROL.search(input_json) is not None
            return Decision(False, (_UNREADABLE,), self.revision) if control else decision
        return decision if raw.allow else raw

    def _evaluate_raw(self, evaluator: Interpreter, input: dict[str, Any]) -> Decision | None:
        """The same decision on the input's real characters (see ``decide``); None when that reading fails."""
        try:
            evaluator.set_input(input)
        except Exception:
            return None
        decision = self._query(evaluator)
        return None if decision.error is not None else decision

    def evaluate_input(self, input: dict[str, Any]) -> Decision:
        """``decide`` on this thread's own evaluator (what the table tests and the other engines' callers use)."""
        ev = getattr(_THREAD, "ev", None)
        if ev is None:
            ev = _THREAD.ev = new_evaluator()
        return self.decide(ev, input)

    def evaluate(self, evaluator: Interpreter, input_json: str) -> Decision:
        try:
            evaluator.set_input_term(input_json)
        except Exception as exc:
            return Decision.failed(f"evaluation error: {exc}", self.revision)
        return self._query(evaluator)

    def _query(self, evaluator: Interpreter) -> Decision:
        try:
            out = evaluator.query_bundle(self.bundle)
            if not out.ok():
                # rego-cpp gives no detail beyond "<error>": a built-in failed (strict) or complete rules conflicted.
                detail = str(out).strip()
                detail = "" if detail == "<error>" else f": {detail[:500]}"
                return Decision.failed(
                    f"evaluation error (a built-in failed, or rules gave conflicting values){detail}", self.revision
                )
            try:
                result = out[0]["x"]
            except (IndexError, KeyError, TypeError):
                result = None
        except ValueError as exc:  # the result did not parse: rego-cpp quoted a computed string (docs/policy.md)
            return Decision.failed(
                f"evaluation error: the policy's result is not valid JSON ({exc}); a string built by a built-in "
                "inside sprintf? build messages with concat",
                self.revision,
            )
        except Exception as exc:
            return Decision.failed(f"evaluation error: {exc}", self.revision)
        return Decision.from_result(result, self.revision)


_THREAD = threading.local()


def new_evaluator() -> Interpreter:
    """An evaluator for one thread. Strict: a failing built-in is an error (a denial), never an undefined."""
    ev = Interpreter()
    ev.strict_built_in_errors = True
    return ev


def compile_policy(path: Path, decision_path: str) -> CompiledPolicy:
    """Load a policy directory or OPA bundle, compile it and lint it; PolicyError lists every problem."""
    return CompiledPolicy(load_policy(path), decision_path)


EVALUATOR_STACK_BYTES = 256 * 1024 * 1024
"""Stack of each evaluator thread. rego-cpp's regexes (C++ std::regex) recurse once per character matched by a
repetition: with the default 8 MB stack, a URL pattern of the shipped policy crashed the whole process on a 65,536
character string, and ``(a|b)*`` on 20,000 characters. 256 MB (reserved, touched only as used) holds well past
``max_argument_string``."""


class _Evaluators:
    """A fixed set of evaluator threads with large stacks, each with its own rego-cpp evaluator."""

    def __init__(self, threads: int):
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Decision], tuple[Any, ...], Future[Decision]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        with _STACK_LOCK:
            previous = threading.stack_size(EVALUATOR_STACK_BYTES)
            try:
                for i in range(threads):
                    t = threading.Thread(target=self._run, name=f"policy-evaluator-{i}", daemon=True)
                    t.start()
                    self._threads.append(t)
            finally:
                threading.stack_size(previous)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiting task, which fails the decision closed
                future.set_exception(exc)

    async def run(self, fn: Callable[..., Decision], *args: Any) -> Decision:
        future: Future[Decision] = Future()
        self._jobs.put((fn, args, future))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


_STACK_LOCK = threading.Lock()


@dataclass(slots=True)
class _AgentSlots:
    limiter: anyio.CapacityLimiter
    users: int = 0


def _agent_of(input: dict[str, Any]) -> str:
    agent = input.get("agent")
    return str(agent.get("id")) if isinstance(agent, dict) else ""


class EmbeddedEngine:
    """Evaluates on worker threads (regopy releases the GIL), bounded by a limiter sized to the cores."""

    name = "regopy"

    def __init__(
        self,
        path: Path,
        decision_path: str,
        timeout_ms: int,
        threads: int = 4,
        threads_per_agent: int = 0,
        queue_timeout_ms: int | None = None,
    ):
        self._path = path
        self._decision_path = decision_path
        self._timeout = timeout_ms / 1000.0
        self._policy = compile_policy(path, decision_path)
        self._local = threading.local()
        self._limiter = anyio.CapacityLimiter(threads) if threads > 0 else None
        self._pool = _Evaluators(threads) if threads > 0 else None
        self._per_agent = threads_per_agent or max(1, threads // 2)
        self._agents: dict[str, _AgentSlots] = {}
        self._queue_timeout = queue_timeout_ms / 1000.0 if queue_timeout_ms else max(1.0, 10 * self._timeout)

    @property
    def revision(self) -> str:
        return self._policy.revision

    @property
    def path(self) -> Path:
        return self._path

    @property
    def decision_path(self) -> str:
        return self._decision_path

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    def compile(self, source: PolicySource) -> CompiledPolicy:
        """A candidate revision for this engine (a reload compiles it, tests it, then swaps it in)."""
        return CompiledPolicy(source, self._decision_path)

    def swap(self, policy: CompiledPolicy) -> None:
        """Install a new revision atomically; decisions already running finish on the one they started with."""
        self._policy = policy

    def _evaluator(self) -> Interpreter:
        ev = getattr(self._local, "ev", None)
        if ev is None:
            ev = self._local.ev = new_evaluator()
        return ev

    def _decide_on(self, policy: CompiledPolicy, input: dict[str, Any]) -> Decision:
        return policy.decide(self._evaluator(), input)

    def _timed(self, policy: CompiledPolicy, input: dict[str, Any]) -> Decision:
        """Evaluate and judge the evaluation's own time: the CPU time of the thread that ran it, so neither a busy
        event loop, nor the wait for an evaluator, nor other agents' evaluations sharing the cores count."""
        t0 = time.thread_time()
        decision = self._decide_on(policy, input)
        if time.thread_time() - t0 > self._timeout:
            return Decision.failed(f"policy took longer than {self._timeout * 1000:.0f} ms", policy.revision)
        return decision

    def _busy(self, policy: CompiledPolicy) -> Decision:
        return Decision(
            False,
            (f"policy engine busy: no evaluator was free within {self._queue_timeout:g} s; retry later",),
            policy.revision,
            {},
            f"no evaluator free within {self._queue_timeout:g} s",
        )

    async def decide(self, input: dict[str, Any]) -> Decision:
        """Evaluate on a worker thread, each agent holding at most ``threads_per_agent`` evaluators.

        Fairness: an agent waits for one of its own slots before it queues for an evaluator, so it never has more
        than its share waiting or running, and the evaluator queue (FIFO) serves agents in turn: one agent flooding
        heavy inputs slows itself, not the others. The wait has its own bound (``queue_timeout_ms``); running out
        of it is its own reason ("policy engine busy"), never an evaluation failure. ``timeout_ms`` judges the
        evaluation alone. An evaluation, once started, keeps its evaluator until it ends even if the request is
        cancelled, so abandoned evaluations cannot pile up beyond ``threads``. With ``threads = 0`` the decision is
        evaluated on the event loop itself: no thread hop, but a slow policy stalls every connection.
        """
        policy = self._policy  # the revision this decision runs on, even if a reload swaps another in meanwhile
        if self._limiter is None or self._pool is None:
            return self._timed(policy, input)
        agent = _agent_of(input)
        own = self._agents.get(agent)
        if own is None:
            own = self._agents[agent] = _AgentSlots(anyio.CapacityLimiter(self._per_agent))
        own.users += 1
        held_own = held = False
        try:
            with anyio.move_on_after(self._queue_timeout):
                await own.limiter.acquire()
                held_own = True
                await self._limiter.acquire()
                held = True
            if not held:
                return self._busy(policy)
            with anyio.CancelScope(shield=True):
                decision = await self._pool.run(self._timed, policy, input)
            return decision
        finally:
            if held:
                self._limiter.release()
            if held_own:
                own.limiter.release()
            own.users -= 1
            if own.users == 0:
                self._agents.pop(agent, None)

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
