"""``mcp-gateway policy test|eval`` and ``mcp-gateway audit replay``: what a policy author runs before shipping.

``policy test`` runs a policy's table tests; ``policy eval`` decides one request as the gateway would (same input
document, same engine) and says how long it took; ``audit replay`` re-decides recorded requests against the
current (or a candidate) policy and lists those that would now be decided differently.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import click
import orjson

from gateway.cli_common import load_or_exit
from gateway.config import Config, PolicyConfig
from gateway.policy.decision import Decision, PolicyEngine, PolicyError

_WARM_RUNS = 20


def _config(path: str) -> Config:
    return load_or_exit(path)


def _fail(lines: list[str], code: int = 2) -> None:
    for line in lines:
        click.echo(line, err=True)
    sys.exit(code)


def _open_engine(cfg: Config, policy_path: str | None) -> PolicyEngine:
    """The configured engine, or the embedded engine on ``policy_path`` (a candidate policy) when given."""
    from gateway.policy.engines import open_engine

    pcfg = cfg.policy
    if policy_path is not None:
        # model_copy, not a new PolicyConfig from model_dump: a dump holds every default, and some settings are
        # only valid beside another (bundle_* beside bundle_url), so re-validating it refuses a valid config.
        engine = pcfg.engine if pcfg.engine != "opa" else "embedded"
        update = {"engine": engine, "path": str(Path(policy_path).resolve()), "bundle_url": None}
        pcfg = pcfg.model_copy(update=update)
    try:
        return open_engine(pcfg, cfg)
    except PolicyError as exc:
        _fail([f"policy: {e}" for e in exc.errors])
        raise


def _engine_label(cfg: Config, policy_path: str | None) -> str:
    if policy_path is not None:
        return f"embedded ({policy_path})"
    if cfg.policy.engine == "opa":
        return f"opa ({cfg.policy.opa_url})"
    return f"embedded ({cfg.resolve(cfg.policy.path)})"


def _parse_doc(text: str, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        import yaml

        return yaml.safe_load(text)
    except Exception as exc:
        _fail([f"{what}: neither JSON nor YAML: {exc}"])


# --- policy ---------------------------------------------------------------------------------------------------


@click.group()
def policy() -> None:
    """Test and try out policies."""


@policy.command("test")
@click.argument("path", required=False)
@click.option("--config", "config_path", default=None, help="Take the policy path (and decision) from this config.")
@click.option(
    "--opa-url", default=None, help="Decide the table cases on this OPA server instead of the embedded engine."
)
@click.option("--decision", default=None, help="The decision rule (default: the config's, or gateway/decision).")
@click.option("-q", "--quiet", is_flag=True, help="Print failures and the totals only.")
@click.option("-v", "--verbose", is_flag=True, help="Print every Rego test's result, not only failures.")
@click.option("-r", "--run", "run_regex", default=None, metavar="REGEX", help="Run only the tests whose name matches.")
@click.option("--coverage", is_flag=True, help="Report the rule lines no test evaluated, per file.")
@click.option("--threshold", type=click.FloatRange(0, 100), default=None, help="Fail below this coverage (percent).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--allow-no-tests", is_flag=True, help="A policy without tests passes (it still must compile).")
@click.option(
    "--engine",
    "engine_name",
    type=click.Choice(["embedded", "regorus", "regopy"]),
    default=None,
    help="The local engine that decides the table cases (default: the config's, or embedded).",
)
def policy_test(
    path: str | None,
    config_path: str | None,
    opa_url: str | None,
    decision: str | None,
    quiet: bool,
    verbose: bool,
    run_regex: str | None,
    coverage: bool,
    threshold: float | None,
    fmt: str,
    allow_no_tests: bool,
    engine_name: str | None,
) -> None:
    """Run the tests of the policy at PATH (default: rego, or the config's): its table tests (**/*_test.yaml,
    *_test.json) and its Rego tests (**/*_test.rego: test_ rules, with input as ..., as opa test runs them).

    Table tests print PASS or FAIL per case, a diff under each failure and "N passed, M failed"; Rego tests
    print as opa test does (failures, then PASS: n/m; -v every result). --coverage adds the lines no test
    evaluated (both kinds of test count); --threshold N fails below N percent. Exits 1 on any failure or a
    coverage below the threshold, 2 when the policy or a test cannot be loaded.
    """
    import re

    from gateway.policy.engines import compile_policy
    from gateway.policy.loader import load_policy
    from gateway.policy.tables import load_tables, report, run_cases, run_cases_async

    catalogue = None
    if config_path is not None:
        from gateway.policy.catalogue import builtin_catalogue

        cfg = _config(config_path)
        engine_name = engine_name or (cfg.policy.engine if cfg.policy.engine != "opa" else None)
        decision = decision or cfg.policy.decision
        path = path or str(cfg.resolve(cfg.policy.path))
        catalogue = builtin_catalogue(cfg)  # its built-in upstreams' tools, as they declare them
    decision = decision or "gateway/decision"
    target = Path(path or "rego")
    try:
        pattern = re.compile(run_regex) if run_regex is not None else None
    except re.error as exc:
        _fail([f"--run {run_regex!r}: not a regular expression: {exc}"])
    coverage = coverage or threshold is not None
    try:
        if opa_url is None:
            compiled = compile_policy(target, decision, engine_name or "embedded")
            source = compiled.source
            decide_case: Any = compiled.evaluate_input
        else:
            source = load_policy(target)
        cases = [c for c in load_tables(source, catalogue) if pattern is None or pattern.search(c.label)]
        if opa_url is None:
            results = run_cases(cases, decide_case)
        else:
            from gateway.policy.opa import OpaEngine

            engine = OpaEngine(PolicyConfig(engine="opa", opa_url=opa_url, decision=decision, timeout_ms=5000))

            async def run() -> Any:
                try:
                    return await run_cases_async(cases, engine.decide)
                finally:
                    await engine.aclose()

            results = anyio.run(run)
        rego = _run_rego_tests(source, pattern, cases if coverage else None, decision)
    except PolicyError as exc:
        _fail(exc.errors)
    rego_results, cov = rego
    if not results and not rego_results:
        if pattern is not None:
            _fail([f"{target}: no test matches --run {run_regex!r}"])
        if not allow_no_tests:
            found = "no table tests found (*_test.yaml, *_test.yml, *_test.json), nor Rego tests (*_test.rego)"
            _fail([f"{target}: {found}"])
    below = cov is not None and threshold is not None and cov.percent < threshold
    failed = any(not r.ok for r in results) or any(r.failed for r in rego_results) or below
    if fmt == "json":
        click.echo(_test_json(source, results, rego_results, cov, threshold, failed))
        sys.exit(1 if failed else 0)
    if results:
        lines, _ = report(results, verbose=not quiet)
        for line in lines:
            click.echo(line)
    if rego_results:
        from gateway.policy.regotest import report as rego_report

        if results:
            click.echo("")
        for line in rego_report(source, rego_results, verbose and not quiet):
            click.echo(line)
    if cov is not None:
        from gateway.policy.coverage import report as coverage_report

        click.echo("")
        for line in coverage_report(cov):
            click.echo(line)
        if below:
            from gateway.policy.coverage import shown

            click.echo(f"coverage {shown(cov.percent)} is below the threshold of {threshold:g}%")
    sys.exit(1 if failed else 0)


def _new_evaluator() -> Any:
    from gateway.policy.embedded import new_evaluator

    return new_evaluator()


def _run_rego_tests(source: Any, pattern: Any, cases: Any, decision: str) -> tuple[list[Any], Any]:
    """The Rego tests' results, and (when ``cases`` is given) the coverage of the Rego tests and those cases."""
    from gateway.policy.regotest import new_engine, parse_modules, regorus_error, run_tests

    if not source.rego_tests and cases is None:
        return [], None
    engine = new_engine(source, coverage=cases is not None)
    modules = parse_modules(engine)
    results = run_tests(source, engine, modules, pattern)
    if cases is None:
        return results, None
    from gateway.policy.coverage import measure

    rule = "data." + decision.replace("/", ".")
    for case in cases:  # the table tests count: each case's input through the decision, as the gateway asks it
        engine.set_input_json(orjson.dumps(case.input).decode())
        try:
            engine.eval_rule(rule)
        except Exception as exc:
            raise PolicyError([f"{case.label}: coverage: {regorus_error(exc, source)}"]) from None
    return results, measure(engine, source, modules)


def _test_json(source: Any, tables: Any, rego: Any, cov: Any, threshold: float | None, failed: bool) -> str:
    doc = {
        "tables": [{"name": r.case.label, "ok": r.ok, "problems": list(r.problems)} for r in tables],
        "tests": [
            {
                "name": r.name,
                "file": source.where(r.rule.file),
                "line": r.rule.line,
                "outcome": r.outcome,
                "duration_ms": round(r.duration_ms, 3),
                "detail": r.detail or None,
            }
            for r in rego
        ],
        "coverage": cov.as_json() if cov is not None else None,
        "threshold": threshold,
        "passed": not failed,
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


@policy.command("lint")
@click.argument("path", required=False)
@click.option("--config", "config_path", default=None, help="Take the policy path (and decision) from this config.")
@click.option("--decision", default=None, help="The decision rule (default: the config's, or gateway/decision).")
def policy_lint(path: str | None, config_path: str | None, decision: str | None) -> None:
    """Check the policy at PATH (default: rego, or the config's) as the gateway does before loading it: the Rego
    subset, names nothing defines, syntax; then compile it. Prints every problem as file:line:col; exits 2 on any."""
    from gateway.policy.engines import compile_policy

    engine_name = "embedded"
    if config_path is not None:
        cfg = _config(config_path)
        decision = decision or cfg.policy.decision
        path = path or str(cfg.resolve(cfg.policy.path))
        engine_name = cfg.policy.engine if cfg.policy.engine != "opa" else "embedded"
    target = Path(path or "rego")
    try:
        compiled = compile_policy(target, decision or "gateway/decision", engine_name)
        tests = _check_rego_tests(compiled.source)
    except PolicyError as exc:
        _fail(exc.errors)
    extra = f", {tests} Rego test modules" if tests else ""
    click.echo(f"{target}: ok (revision {compiled.revision}, {len(compiled.source.modules)} modules{extra})")


def _check_rego_tests(source: Any) -> int:
    """The Rego test modules parse, and use no ``with`` the test runner would refuse; how many there are."""
    if not source.rego_tests:
        return 0
    from gateway.policy.regotest import new_engine, parse_modules, unsupported_withs

    problems = unsupported_withs(parse_modules(new_engine(source)), source)
    if problems:
        raise PolicyError([line for lines in problems.values() for line in lines])
    return len(source.rego_tests)


@policy.command("eval")
@click.option("--config", "config_path", default="gateway.toml", show_default=True)
@click.option("--agent", "agent_id", default=None, help="Agent id; team and roles come from its API key entry.")
@click.option("--team", default=None, help="Team (default: the agent's, from the config).")
@click.option("--role", "roles", multiple=True, help="Role (repeatable; default: the agent's, from the config).")
@click.option("--tool", default=None, metavar="SERVER__TOOL", help="The tool as agents name it.")
@click.option("--args", "args_json", default=None, metavar="JSON", help="The call's arguments.")
@click.option(
    "--annotations",
    "annotations_json",
    default=None,
    metavar="JSON",
    help="The tool's annotations, e.g. '{\"destructiveHint\": true}'.",
)
@click.option("--action", default="tools/call", show_default=True)
@click.option(
    "--input",
    "input_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="A whole input document (JSON or YAML) instead of the options above; missing fields are filled.",
)
@click.option("--policy", "policy_path", default=None, help="Decide with the embedded engine on this policy instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option(
    "--explain", is_flag=True, help="Show the rules behind each reason and the grant: file:line, the input they read."
)
def policy_eval(
    config_path: str,
    agent_id: str | None,
    team: str | None,
    roles: tuple[str, ...],
    tool: str | None,
    args_json: str | None,
    annotations_json: str | None,
    action: str,
    input_file: str | None,
    policy_path: str | None,
    as_json: bool,
    explain: bool,
) -> None:
    """Decide one request against the configured engine, as the gateway would; print the decision, the reasons
    and the time the decision took. Exits 0 when allowed, 1 when denied, 2 on bad input.

    --explain adds which rule produced each reason and which grant allowed the call, each with its file:line and
    the input values it read (evaluated again, rule by rule, on the policy's files).

    The tool's annotations are those its upstream declares (a built-in's declaration, a stdio or HTTP upstream's
    tools/list, asked live, else the policy's catalogue.json), unless --annotations (or the input file) gives them.
    """
    from gateway.policy.tables import complete_input

    cfg = _config(config_path)
    t0 = time.perf_counter()
    engine = _open_engine(cfg, policy_path)
    compiled_ms = (time.perf_counter() - t0) * 1000
    if input_file is not None:
        try:
            text = Path(input_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _fail([f"{input_file}: cannot be read: {exc}"])
        doc = _parse_doc(text, input_file)
        if not isinstance(doc, dict):
            _fail([f"{input_file}: an input document must be an object"])
        inp = complete_input(doc)
        given = "annotations" in doc
    else:
        if agent_id is None or tool is None:
            _fail(["give --agent and --tool (or --input FILE)"])
        assert agent_id is not None and tool is not None
        inp = _build_input(cfg, engine, agent_id, team, roles, tool, args_json, annotations_json, action)
        given = annotations_json is not None
    origin = "given" if given else None
    if not given and inp.get("action") in ("tools/call", "tools/list") and isinstance(inp.get("server"), str):
        annotations, origin = _declared_annotations(cfg, policy_path, inp["server"], str(inp.get("tool") or ""))
        inp["annotations"] = annotations

    async def decide() -> tuple[Decision, float, float]:
        """The decision, the first decision's time, and the median of warm ones (what the gateway pays)."""
        try:
            t1 = time.perf_counter()
            d = await engine.decide(inp)
            first = (time.perf_counter() - t1) * 1000
            warm = []
            for _ in range(_WARM_RUNS):
                t1 = time.perf_counter()
                await engine.decide(inp)
                warm.append((time.perf_counter() - t1) * 1000)
            return d, first, sorted(warm)[len(warm) // 2]
        finally:
            await engine.aclose()

    decision, first_ms, took_ms = anyio.run(decide)
    explanation = _explain(cfg, policy_path, inp, decision) if explain else None
    if as_json:
        click.echo(
            orjson.dumps(
                {
                    "allow": decision.allow,
                    "reasons": list(decision.reasons),
                    "result": decision.result,
                    "error": decision.error,
                    "revision": decision.revision,
                    "engine_decision_id": decision.engine_decision_id,
                    "decision_ms": round(took_ms, 3),
                    "first_decision_ms": round(first_ms, 3),
                    "input": inp,
                    "annotations_from": origin,
                    **({"explanation": explanation.as_json()} if explanation is not None else {}),
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        click.echo(f"decision:    {'allow' if decision.allow else 'deny'}")
        if decision.reasons:
            click.echo("reasons:")
            for r in decision.reasons:
                click.echo(f"  - {r}")
        if decision.error:
            click.echo(f"error:       {decision.error}")
        if origin is not None:
            click.echo(f"annotations: {orjson.dumps(inp['annotations']).decode()} ({origin})")
        if decision.result.get("containment"):
            click.echo(f"containment: {orjson.dumps(decision.result['containment']).decode()}")
        click.echo(f"revision:    {decision.revision} ({_engine_label(cfg, policy_path)})")
        if decision.engine_decision_id:
            click.echo(f"decision id: {decision.engine_decision_id}")
        load = f", policy loaded in {compiled_ms:.1f} ms" if engine_is_embedded(engine) else ""
        click.echo(f"time:        {took_ms:.3f} ms (median of {_WARM_RUNS}; the first took {first_ms:.3f} ms{load})")
        if explanation is not None:
            from gateway.policy.explain import report as explain_report

            for line in explain_report(explanation):
                click.echo(line)
    sys.exit(0 if decision.allow else 1)


def _explain(cfg: Config, policy_path: str | None, inp: dict[str, Any], decision: Decision) -> Any:
    """The explanation of ``decision`` on the policy's files, with a note when they may not be what decided."""
    from gateway.policy.explain import explain
    from gateway.policy.loader import load_policy

    path = Path(policy_path) if policy_path else cfg.resolve(cfg.policy.path)
    try:
        source = load_policy(path)
        ex = explain(source, inp, cfg.policy.decision)
    except PolicyError as exc:
        _fail([f"--explain: {e}" for e in exc.errors])
    _note_differences(ex, source, decision.allow, list(decision.reasons), decision.revision)
    return ex


def _note_differences(
    ex: Any, source: Any, allow: bool, reasons: list[str], revision: str | None, compare: bool = True
) -> None:
    """Say when the explained policy is not the revision that decided, or (``compare``) decides otherwise."""
    if revision is not None and revision != source.revision:
        ex.notes.append(
            f"the decision was made by policy revision {revision}; {source.root} is revision {source.revision} "
            "now: the rules and lines below are today's"
        )
    mine = ex.decision if isinstance(ex.decision, dict) else {}
    differs = mine.get("allow") is not allow or sorted(mine.get("reasons") or []) != sorted(reasons)
    if compare and differs:
        verdict = "allows" if mine.get("allow") is True else "denies"
        ex.notes.append(
            f"the policy's files decide this input otherwise ({verdict}: {'; '.join(mine.get('reasons') or [])})"
        )


@policy.command("catalogue")
@click.option(
    "--config",
    "config_paths",
    multiple=True,
    default=["gateway.toml"],
    show_default=True,
    help="Catalogue this config's upstreams (repeatable: several configs go in one catalogue).",
)
@click.option(
    "--out",
    "out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Update this catalogue file (e.g. rego/catalogue.json): listed upstreams replace theirs.",
)
def policy_catalogue(config_paths: tuple[str, ...], out: str | None) -> None:
    """Print (or update) the tool catalogue the table tests decide on: each upstream's tools and annotations.

    Built-in upstreams give their declarations; stdio and HTTP upstreams are started and listed. A contained stdio
    upstream, or one that cannot be listed, is reported and left as it was in the file."""
    from gateway.policy.catalogue import annotations_of, list_tools, parse_catalogue

    catalogue: dict[str, Any] = {}
    if out is not None and Path(out).exists():
        try:
            catalogue = dict(parse_catalogue(out, Path(out).read_bytes()))
        except ValueError as exc:
            _fail([str(exc)])
    failed = False
    for config_path in config_paths:
        cfg = _config(config_path)
        for up in cfg.upstreams:
            try:
                tools = anyio.run(list_tools, cfg, up, min(up.start_timeout_s, 30.0))
            except ValueError as exc:
                click.echo(f"{config_path}: {exc}: not catalogued", err=True)
                failed = True
                continue
            catalogue[up.name] = dict(sorted(annotations_of(tools).items()))
    about = (
        "The annotations each upstream declares for its tools: table tests decide on them (docs/policy.md). "
        "Written by: mcp-gateway policy catalogue --config ... --out catalogue.json"
    )
    text = (
        orjson.dumps({"_about": about, **dict(sorted(catalogue.items()))}, option=orjson.OPT_INDENT_2).decode() + "\n"
    )
    if out is None:
        click.echo(text, nl=False)
    else:
        Path(out).write_text(text, encoding="utf-8")
    sys.exit(1 if failed else 0)


def engine_is_embedded(engine: Any) -> bool:
    from gateway.policy.engines import is_local

    return is_local(engine)


def _policy_catalogue(cfg: Config, policy_path: str | None) -> dict[str, dict[str, dict[str, Any]]]:
    """The cached catalogue of the policy decided with (empty for OPA, or a policy that has none)."""
    from gateway.policy.loader import load_policy

    if policy_path is None and cfg.policy.engine == "opa":
        return {}
    try:
        return load_policy(Path(policy_path) if policy_path else cfg.resolve(cfg.policy.path)).catalogue
    except PolicyError:
        return {}


def _declared_annotations(cfg: Config, policy_path: str | None, server: str, tool: str) -> tuple[dict[str, Any], str]:
    """The annotations the gateway would pass for this tool, and where they came from; exits 2 when they cannot be
    known (deciding on made-up annotations is how an eval says allow where the gateway denies)."""
    from gateway.policy.catalogue import annotations_of, builtin_tools, list_tools

    up = next((u for u in cfg.upstreams if u.name == server), None)
    why = f"the config has no upstream {server}"
    if up is not None:
        try:
            if up.transport == "builtin":
                tools, origin = builtin_tools(up), f"declared by built-in {up.tools} upstream {server}"
            else:
                tools = anyio.run(list_tools, cfg, up, min(up.start_timeout_s, 30.0))
                origin = f"listed by upstream {server}"
        except ValueError as exc:
            why = str(exc)
        else:
            listed = annotations_of(tools)
            if tool not in listed:
                _fail(
                    [
                        f"upstream {server} offers no tool {tool!r}: the gateway answers such a call as an unknown "
                        "tool, without asking the policy"
                    ]
                )
            return listed[tool], origin
    cached = _policy_catalogue(cfg, policy_path).get(server, {})
    if tool in cached:
        return cached[tool], f"from the policy's catalogue.json ({why})"
    _fail(
        [
            f"the annotations of {server}__{tool} are unknown ({why}, and the policy's catalogue.json does not "
            "list it): give them with --annotations"
        ]
    )
    raise AssertionError  # _fail exits


def _build_input(
    cfg: Config,
    engine: PolicyEngine,
    agent_id: str,
    team: str | None,
    roles: tuple[str, ...],
    tool: str,
    args_json: str | None,
    annotations_json: str | None,
    action: str,
) -> dict[str, Any]:
    """The input document the gateway would build for this call (gateway.decide.Decider.build_input)."""
    from gateway.decide import Decider, Request, limits_from
    from gateway.identity import Agent
    from gateway.metrics import Metrics

    key = next((k for k in cfg.identity.api_keys if k.agent == agent_id), None)
    if key is None and team is None:
        _fail([f"agent {agent_id!r} has no [[identity.api_keys]] entry in the config: give --team (and --role)"])
    agent = Agent(
        agent_id,
        team or (key.team if key else ""),
        tuple(roles) if roles else tuple(key.roles if key else ()),
        "api_key",
    )
    server, sep, tool_name = tool.partition("__")
    if not sep or not server or not tool_name:
        _fail([f"--tool {tool!r}: name it SERVER__TOOL, as agents see it (e.g. time__convert_time)"])
    arguments = _parse_doc(args_json, "--args") if args_json is not None else {}
    annotations = _parse_doc(annotations_json, "--annotations") if annotations_json is not None else {}
    if not isinstance(arguments, dict) or not isinstance(annotations, dict):
        _fail(["--args and --annotations must be JSON objects"])
    req = Request(agent=agent, action=action, view=None, name=tool, arguments=arguments)
    decider = Decider(engine, Metrics(), limits_from(cfg.policy))
    return decider.build_input(req, server, tool=tool_name, annotations=annotations, arguments=arguments)


# --- audit replay ---------------------------------------------------------------------------------------------


@dataclass
class _Record:
    where: str
    rec: dict[str, Any]

    @property
    def redacted(self) -> bool:
        """Argument values were not recorded (only their digest and keys): the policy saw more than we have."""
        masked = self.rec.get("masked")
        args = (self.rec.get("input") or {}).get("arguments")
        shaped = (
            isinstance(args, dict)
            and set(args) == {"digest", "keys"}
            and args.get("digest") == self.rec.get("arguments_digest")
        )
        return (isinstance(masked, list) and "/input/arguments" in masked) or shaped

    @property
    def revision(self) -> str:
        """The revision that decided it (``bundles.gateway.revision``), "?" when the record does not say."""
        bundles = self.rec.get("bundles")
        gateway = bundles.get("gateway") if isinstance(bundles, dict) else None
        revision = gateway.get("revision") if isinstance(gateway, dict) else None
        return str(revision) if revision is not None else "?"

    @property
    def label(self) -> str:
        r = self.rec
        target = r.get("tool") or r.get("resource") or (r.get("input") or {}).get("prompt") or ""
        target = f"{r.get('server')}__{target}" if r.get("server") and target else (r.get("server") or target or "-")
        who = f"{r.get('timestamp', '?')} {r.get('decision_id', '?')} {r.get('agent', '?')}"
        return f"{who} {r.get('action', '?')} {target}"


def _audit_files(files: tuple[Path, ...], as_given: bool) -> list[Path]:
    """As ``audit verify`` reads them: each FILE with its rotated files, in chain order, unless ``as_given``."""
    from gateway.audit import audit_set, chain_order

    if as_given:
        return list(files)
    paths: list[Path] = []
    for f in files:
        for p in audit_set(f) or [f]:
            if p not in paths:
                paths.append(p)
    return chain_order(paths)


def _records(files: list[Path]) -> Iterator[_Record | str]:
    """The decision records of the files, in order; a string for each unreadable line."""
    for path in files:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    yield f"{path}:{lineno}: not a JSON record"
                    continue
                if isinstance(rec, dict) and rec.get("type") == "decision":
                    yield _Record(f"{path}:{lineno}", rec)


def _summary(allow: Any, reasons: Any, result: Any) -> tuple[bool, tuple[str, ...], Any]:
    """What a replay compares; a record not shaped as the gateway writes them compares as a denial without reasons."""
    containment = result.get("containment") if isinstance(result, dict) else None
    listed = reasons if isinstance(reasons, (list, tuple)) else ()
    return allow is True, tuple(sorted(str(r) for r in listed)), containment


def _describe(s: tuple[bool, tuple[str, ...], Any]) -> str:
    allow, reasons, containment = s
    text = "allow" if allow else "deny"
    if reasons:
        text += ": " + "; ".join(reasons)
    if containment:
        text += f" (containment {orjson.dumps(containment).decode()})"
    return text


@click.command("replay")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--config", "config_path", default="gateway.toml", show_default=True)
@click.option(
    "--policy",
    "policy_path",
    default=None,
    help="Replay against this candidate policy (directory or bundle) instead of the configured one.",
)
@click.option("--as-given", is_flag=True, help="Read FILES only, in the order given (default: with rotated files).")
def audit_replay(files: tuple[Path, ...], config_path: str, policy_path: str | None, as_given: bool) -> None:
    """Re-decide the decision records in FILES against the current policy; list those decided differently now.

    Records whose argument values were redacted ([audit] record_arguments = false, the default) cannot be
    replayed faithfully: they are replayed with the digest and keys in place of the arguments and listed
    separately. Exits 1 when a faithfully replayed record would now be decided differently.
    """
    cfg = _config(config_path)
    engine = _open_engine(cfg, policy_path)
    click.echo(f"replaying against {_engine_label(cfg, policy_path)}, revision {engine.revision}")

    async def replay() -> tuple[int, int, int, int, int]:
        replayed = differ = redacted = skipped = unreadable = 0
        try:
            for item in _records(_audit_files(files, as_given)):
                if isinstance(item, str):
                    unreadable += 1
                    click.echo(f"UNREADABLE {item}")
                    continue
                rec = item.rec
                inp = rec.get("input")
                if not isinstance(inp, dict) or (rec.get("result") is None and rec.get("error") is None):
                    skipped += 1  # decided without asking policy (an unknown tool or target)
                    continue
                decision = await engine.decide(inp)
                replayed += 1
                before = _summary(rec.get("allow"), rec.get("reasons"), rec.get("result"))
                now = _summary(decision.allow, decision.reasons, decision.result)
                if item.redacted:
                    redacted += 1
                    verdict = "same" if before == now else f"differs: was {_describe(before)}; now {_describe(now)}"
                    click.echo(f"REDACTED {item.label}: arguments not recorded, replayed without them: {verdict}")
                elif before != now:
                    differ += 1
                    click.echo(f"DIFFERS  {item.label} (revision {item.revision} -> {decision.revision})")
                    click.echo(f"    was: {_describe(before)}")
                    click.echo(f"    now: {_describe(now)}")
        finally:
            await engine.aclose()
        return replayed, differ, redacted, skipped, unreadable

    replayed, differ, redacted, skipped, unreadable = anyio.run(replay)
    tail = f"{replayed} decisions replayed: {differ} decided differently now"
    tail += f", {redacted} not replayed faithfully (arguments redacted; set [audit] record_arguments = true)"
    if skipped:
        tail += f", {skipped} skipped (decided without policy: unknown tool or target)"
    if unreadable:
        tail += f", {unreadable} unreadable lines"
    click.echo(tail)
    sys.exit(1 if differ else 0)


@click.command("explain")
@click.argument("decision_id")
@click.option("--config", "config_path", default="gateway.toml", show_default=True)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Audit log to search (default: the config's [audit] path, with its rotated files).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def audit_explain(decision_id: str, config_path: str, files: tuple[Path, ...], as_json: bool) -> None:
    """Explain a recorded decision: the rules behind each recorded reason and the grant that allowed the call,
    with their file:line and the input values they read, on the configured policy.

    Says when the policy is no longer the revision that decided. When the record kept only a digest of the
    arguments ([audit] record_arguments = false), a reason is matched to its rule by the message's wording and
    the argument values are shown as not recorded. Exits 0 when explained, 2 when the decision is not found.
    """
    from gateway.policy.explain import explain_recorded
    from gateway.policy.explain import report as explain_report
    from gateway.policy.loader import load_policy

    cfg = _config(config_path)
    paths = _audit_files(files, False) if files else _audit_files((cfg.resolve(cfg.audit.path),), False)
    found = next(
        (
            r
            for r in _records([p for p in paths if p.exists()])
            if isinstance(r, _Record) and r.rec.get("decision_id") == decision_id
        ),
        None,
    )
    if found is None:
        _fail([f"decision {decision_id} is not in {', '.join(str(p) for p in paths) or 'the audit log'}"])
    assert found is not None
    rec = found.rec
    inp = rec.get("input")
    if not isinstance(inp, dict) or (rec.get("result") is None and rec.get("error") is None):
        _fail([f"decision {decision_id} was made without asking the policy (an unknown tool or target)"])
    assert isinstance(inp, dict)
    try:
        source = load_policy(cfg.resolve(cfg.policy.path))
        reasons = [str(r) for r in rec.get("reasons") or []]
        ex = explain_recorded(source, inp, cfg.policy.decision, reasons, found.redacted)
    except PolicyError as exc:
        _fail(exc.errors)
    # Without the argument values, re-deciding cannot be compared with the record (the note below says why).
    _note_differences(ex, source, rec.get("allow") is True, reasons, found.revision, compare=not found.redacted)
    if found.redacted:
        ex.notes.append(
            "the arguments were recorded as a digest only ([audit] record_arguments = false): reasons are matched to "
            "their rules by wording, and the argument values the rules read are not known"
        )
    if as_json:
        doc = {"decision_id": decision_id, "record": found.where, "revision": found.revision, **ex.as_json()}
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"decision:    {decision_id} ({found.where})")
    click.echo(f"request:     {found.label}")
    click.echo(f"decided:     {_describe(_summary(rec.get('allow'), rec.get('reasons'), rec.get('result')))}")
    same = ", the same" if found.revision == source.revision else ""
    click.echo(f"revision:    {found.revision} (the policy is {source.revision} now{same})")
    for line in explain_report(ex):
        click.echo(line)
