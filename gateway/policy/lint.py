"""Checks a policy against the Rego subset the embedded engine (rego-cpp) supports, at load time.

rego-cpp compiles a module that calls an unknown or unsupported built-in (``net.cidr_contains``, ``http.send``)
and only fails when the call is evaluated: in production, on the first request that reaches it. This lint finds
such calls before the policy is ever used, and also RE2-only regex syntax, which std::regex rejects or silently
never matches. It is a scanner, not a parser: it masks comments and strings, tracks bracket depth to tell rule
heads (function definitions) from calls, and resolves names through the module's imports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from gateway.policy.decision import PolicyError
from gateway.policy.loader import PolicySource
from gateway.policy.references import IMPORT, REGO_KEYWORDS, bracket_depths, call_args, undefined_references
from gateway.policy.syntax import syntax_errors

DOC = "docs/policy.md#the-supported-rego-subset"

# Every built-in OPA v1 has (callable by name). rego-cpp's is_builtin() aborts the process on some names that are
# not built-ins (a prefix of one, such as "io.jwt"), so it is only ever asked about these names.
_OPA_BUILTIN_NAMES = """
    abs all any array.concat array.reverse array.slice base64.decode base64.encode base64.is_valid base64url.decode
    base64url.encode base64url.encode_no_pad bits.and bits.lsh bits.negate bits.or bits.rsh bits.xor cast_array
    cast_boolean cast_null cast_object cast_set cast_string ceil concat contains count crypto.hmac.equal
    crypto.hmac.md5 crypto.hmac.sha1 crypto.hmac.sha256 crypto.hmac.sha512 crypto.md5 crypto.parse_private_keys
    crypto.sha1 crypto.sha256 crypto.x509.parse_and_verify_certificates
    crypto.x509.parse_and_verify_certificates_with_options crypto.x509.parse_certificate_request
    crypto.x509.parse_certificates crypto.x509.parse_keypair crypto.x509.parse_rsa_private_key endswith floor
    format_int glob.match glob.quote_meta graph.reachable graph.reachable_paths graphql.is_valid graphql.parse
    graphql.parse_and_verify graphql.parse_query graphql.parse_schema graphql.schema_is_valid hex.decode hex.encode
    http.send indexof indexof_n intersection io.jwt.decode io.jwt.decode_verify io.jwt.encode_sign
    io.jwt.encode_sign_raw io.jwt.verify_es256 io.jwt.verify_es384 io.jwt.verify_es512 io.jwt.verify_hs256
    io.jwt.verify_hs384 io.jwt.verify_hs512 io.jwt.verify_ps256 io.jwt.verify_ps384 io.jwt.verify_ps512
    io.jwt.verify_rs256 io.jwt.verify_rs384 io.jwt.verify_rs512 is_array is_boolean is_null is_number is_object
    is_set is_string json.filter json.is_valid json.marshal json.marshal_with_options json.match_schema json.patch
    json.remove json.unmarshal json.verify_schema lower max min net.cidr_contains net.cidr_contains_matches
    net.cidr_expand net.cidr_intersects net.cidr_is_valid net.cidr_merge net.cidr_overlap net.lookup_ip_addr
    numbers.range numbers.range_step object.filter object.get object.keys object.remove object.subset object.union
    object.union_n opa.runtime print product providers.aws.sign_req rand.intn regex.find_all_string_submatch_n
    regex.find_n regex.globs_match regex.is_valid regex.match regex.replace regex.split regex.template_match
    rego.metadata.chain rego.metadata.rule rego.parse_module replace round semver.compare semver.is_valid set_diff
    sort split sprintf startswith strings.any_prefix_match strings.any_suffix_match strings.count
    strings.render_template strings.replace_n strings.reverse substring sum time.add_date time.clock time.date
    time.diff time.format time.now_ns time.parse_duration_ns time.parse_ns time.parse_rfc3339_ns time.weekday
    to_number trace trim trim_left trim_prefix trim_right trim_space trim_suffix type_name union units.parse
    units.parse_bytes upper urlquery.decode urlquery.decode_object urlquery.encode urlquery.encode_object
    uuid.parse uuid.rfc4122 walk yaml.is_valid yaml.marshal yaml.unmarshal
"""
_OPA_BUILTINS = frozenset(_OPA_BUILTIN_NAMES.split())

# How many arguments each built-in takes (one more is the output form: count(x, n) binds n). rego-cpp compiles a
# call with the wrong number and fails when it runs (count() crashes the process): checked at load instead.
_ARITIES = """
    0: opa.runtime time.now_ns
    1: abs all any array.reverse base64.decode base64.encode base64.is_valid base64url.decode base64url.encode
       base64url.encode_no_pad bits.negate cast_array cast_boolean cast_null cast_object cast_set cast_string ceil
       count crypto.md5 crypto.parse_private_keys crypto.sha1 crypto.sha256 crypto.x509.parse_and_verify_certificates
       crypto.x509.parse_certificate_request crypto.x509.parse_certificates crypto.x509.parse_rsa_private_key floor
       glob.quote_meta hex.decode hex.encode intersection io.jwt.decode is_array is_boolean is_null is_number
       is_object is_set is_string json.is_valid json.marshal json.unmarshal lower max min object.keys object.union_n
       product regex.is_valid round semver.is_valid sort strings.reverse sum time.clock time.date time.format
       time.parse_duration_ns time.parse_rfc3339_ns time.weekday to_number trim_space type_name union units.parse
       units.parse_bytes upper urlquery.decode urlquery.decode_object urlquery.encode urlquery.encode_object
       uuid.parse uuid.rfc4122 walk yaml.is_valid yaml.marshal yaml.unmarshal
    2: array.concat bits.and bits.lsh bits.or bits.rsh bits.xor concat contains crypto.hmac.equal crypto.hmac.md5
       crypto.hmac.sha1 crypto.hmac.sha256 crypto.hmac.sha512 crypto.x509.parse_keypair endswith format_int
       graph.reachable graph.reachable_paths indexof indexof_n io.jwt.decode_verify io.jwt.verify_es256
       io.jwt.verify_es384 io.jwt.verify_es512 io.jwt.verify_hs256 io.jwt.verify_hs384 io.jwt.verify_hs512
       io.jwt.verify_ps256 io.jwt.verify_ps384 io.jwt.verify_ps512 io.jwt.verify_rs256 io.jwt.verify_rs384
       io.jwt.verify_rs512 json.filter json.marshal_with_options json.patch json.remove numbers.range object.filter
       object.remove object.subset object.union rand.intn regex.globs_match regex.match regex.split semver.compare
       set_diff split sprintf startswith strings.any_prefix_match strings.any_suffix_match strings.count
       strings.replace_n time.diff time.parse_ns trim trim_left trim_prefix trim_right trim_suffix
    3: array.slice glob.match io.jwt.encode_sign io.jwt.encode_sign_raw numbers.range_step object.get
       regex.find_all_string_submatch_n regex.find_n regex.replace replace substring
    4: regex.template_match time.add_date
"""
_BUILTIN_ARITY = {
    name: int(n) for n, names in re.findall(r"(\d):([^:]*?)(?=\s\d:|\Z)", _ARITIES, re.S) for name in names.split()
}

# Built-ins rego-cpp evaluates that its is_builtin() does not list.
_SPECIAL = frozenset({"print", "set"})
_CALL = re.compile(r"(?<![\w.\]\)\"`])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\(")
_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)", re.M)
_REGEX_FUNCS = frozenset(
    {
        "regex.match",
        "regex.is_valid",
        "regex.split",
        "regex.find_n",
        "regex.replace",
        "regex.find_all_string_submatch_n",
        "regex.template_match",
        "regex.globs_match",
    }
)
_RE2_ONLY: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\(\?[imsU-]+[:)]"), "inline flags such as (?i)"),
    (re.compile(r"\(\?P?<[A-Za-z_]"), "named groups (?P<name>...)"),
    (re.compile(r"\\[pP]"), "Unicode classes \\p{..}"),
    (re.compile(r"\\[Az]"), "\\A and \\z anchors (use ^ and $)"),
    (re.compile(r"\\Q"), "\\Q...\\E quoting"),
)


@dataclass(frozen=True)
class _Literal:
    start: int
    end: int
    value: str | None


def _template(src: str, q: int) -> tuple[int, list[tuple[int, int]]]:
    """The closing quote of the template string (``$"..."``, ``$`...` ``) opened at ``q``, and the ranges of its
    ``{expression}`` parts: code, not text (``\\{`` is a brace in the text)."""
    quote, n = src[q], len(src)
    code = []
    j = q + 1
    while j < n and src[j] != quote and not (quote == '"' and src[j] == "\n"):
        if src[j] == "\\":
            j += 2
        elif src[j] == "{":
            k, depth = j + 1, 1
            while k < n:
                c = src[k]
                if c == '"':  # a string inside the expression may hold braces and quotes
                    k += 1
                    while k < n and src[k] != '"':
                        k += 2 if src[k] == "\\" else 1
                elif c == "`":
                    k = src.find("`", k + 1)
                    k = n if k < 0 else k
                elif c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            code.append((j + 1, min(k, n)))
            j = k + 1
        else:
            j += 1
    return min(j, n - 1), code


def _mask(src: str) -> tuple[str, list[_Literal]]:
    """Blank out comments and string contents (offsets preserved); return the string literals found. The
    expressions inside a template string stay: they are code (an ``input.x`` there is read, a call there is made)."""
    out = list(src)
    lits: list[_Literal] = []
    i, n = 0, len(src)
    while i < n:
        ch = src[i]
        if ch == "$" and i + 1 < n and src[i + 1] in '"`':
            end, code = _template(src, i + 1)
            lits.append(_Literal(i, end + 1, None))  # not a constant: no literal checks apply
            out[i + 2 : end] = [c if c == "\n" else " " for c in src[i + 2 : end]]
            for a, b in code:
                inner, inner_lits = _mask(src[a:b])
                out[a:b] = list(inner)
                lits.extend(_Literal(a + lit.start, a + lit.end, lit.value) for lit in inner_lits)
            i = end + 1
        elif ch == "#":
            j = src.find("\n", i)
            j = n if j < 0 else j
            out[i:j] = " " * (j - i)
            i = j
        elif ch == '"':
            j = i + 1
            while j < n and src[j] != '"' and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            try:
                value: str | None = json.loads(src[i : j + 1])
            except ValueError:
                value = None
            lits.append(_Literal(i, j + 1, value))
            out[i + 1 : j] = " " * (j - i - 1)
            i = j + 1
        elif ch == "`":
            j = src.find("`", i + 1)
            j = n - 1 if j < 0 else j
            lits.append(_Literal(i, j + 1, src[i + 1 : j]))
            out[i + 1 : j] = [c if c == "\n" else " " for c in src[i + 1 : j]]
            i = j + 1
        else:
            i += 1
    return "".join(out), lits


def mask(src: str) -> str:
    """The source with comments and string contents blanked, offsets unchanged."""
    return _mask(src)[0]


_DEFAULT = re.compile(r"^default\s+([A-Za-z_]\w*)", re.M)
_PARTIAL_SET = re.compile(r"^([A-Za-z_]\w*)\s+contains\b", re.M)
_WITH = re.compile(r"\bwith\s+[\w.\[\]]+\s+as\b")
_FUNC_HEAD = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\(([^()]*)\)", re.M)
_RULE_START = re.compile(r"^[ \t]*(?!else\b)[A-Za-z_]", re.M)


def _matching(masked: str, start: int) -> int:
    """The offset of the bracket closing the one at ``start`` (or the end of the text)."""
    depth = 0
    for i in range(start, len(masked)):
        if masked[i] in "{[(":
            depth += 1
        elif masked[i] in "}])":
            depth -= 1
            if depth == 0:
                return i
    return len(masked)


def _comprehension_args(masked: str, depth: list[int]) -> list[tuple[int, str]]:
    """Function arguments used as a key inside a comprehension of the function's body.

    rego-cpp 1.5.2 does not bind them there: ``f(p) := {x | some x in d[p]}`` iterates over every key of ``d``,
    where OPA uses the argument. Binding it first (``q := p``) works on both engines.
    """
    found: list[tuple[int, str]] = []
    starts = [m.start() for m in _RULE_START.finditer(masked) if depth[m.start()] == 0]
    for head in _FUNC_HEAD.finditer(masked):
        if depth[head.start()] != 0:
            continue
        params = {p.strip() for p in head.group(2).split(",") if re.fullmatch(r"\s*[A-Za-z]\w*\s*", p)}
        if not params:
            continue
        end = next((s for s in starts if s > head.start()), len(masked))
        key = re.compile(r"\[\s*(" + "|".join(sorted(params)) + r")\s*\]")
        i = head.end()
        while i < end:
            if masked[i] in "{[":
                close = _matching(masked, i)
                inner = masked[i + 1 : close]
                inner_depth = depth[i + 1]
                if any(c == "|" and depth[i + 1 + k] == inner_depth for k, c in enumerate(inner)):
                    found.extend((i + 1 + m.start(1), m.group(1)) for m in key.finditer(inner))
                    i = close
            i += 1
    return found


@dataclass
class _Module:
    name: str
    src: str
    masked: str
    literals: dict[int, _Literal]
    """String literals by their start offset."""
    package: str
    aliases: set[str]
    heads: set[str]
    calls: list[tuple[str, int, int]]
    """(name, offset of the name, offset after the opening parenthesis)."""
    captured_args: list[tuple[int, str]]
    withs: list[int]
    defaults: dict[str, int]
    partial_sets: set[str]
    arities: list[tuple[str, int, int]]
    """(function, number of arguments, offset) of each function head."""


def _scan(name: str, src: str) -> _Module:
    masked, lits = _mask(src)
    depth = bracket_depths(masked)
    pkg = _PACKAGE.search(masked)
    aliases = set()
    for m in IMPORT.finditer(masked):
        path, alias = m.group(1), m.group(2)
        if path.split(".")[0] in ("data", "input"):
            aliases.add(alias or path.split(".")[-1])
    heads, calls = set(), []
    for m in _CALL.finditer(masked):
        fn = m.group(1)
        if fn in REGO_KEYWORDS:
            continue
        line_start = masked.rfind("\n", 0, m.start()) + 1
        if depth[m.start()] == 0 and not masked[line_start : m.start()].strip():
            heads.add(fn)  # a rule head at the start of a line: a function definition
        else:
            calls.append((fn, m.start(), m.end()))
    captured = _comprehension_args(masked, depth)
    withs = [m.start() for m in _WITH.finditer(masked)]
    defaults = {m.group(1): m.start() for m in _DEFAULT.finditer(masked)}
    partial_sets = {m.group(1) for m in _PARTIAL_SET.finditer(masked)}
    arities = [
        (h.group(1), len([a for a in h.group(2).split(",") if a.strip()]), h.start())
        for h in _FUNC_HEAD.finditer(masked)
        if depth[h.start()] == 0 and h.group(1) not in REGO_KEYWORDS
    ]
    return _Module(
        name,
        src,
        masked,
        {lit.start: lit for lit in lits},
        pkg.group(1) if pkg else "",
        aliases,
        heads,
        calls,
        captured,
        withs,
        defaults,
        partial_sets,
        arities,
    )


def _literal_arg(mod: _Module, after_paren: int) -> _Literal | None:
    """The string literal that is a call's first argument, if it is one."""
    i = after_paren
    while i < len(mod.masked) and mod.masked[i].isspace():
        i += 1
    lit = mod.literals.get(i)
    if lit is None:
        return None
    end = lit.end
    while end < len(mod.masked) and mod.masked[end].isspace():
        end += 1
    return lit if end < len(mod.masked) and mod.masked[end] in ",)" else None


def _check_literal(fn: str, lit: _Literal) -> str | None:
    if lit.value is None:
        return None
    if fn in _REGEX_FUNCS:
        for pattern, what in _RE2_ONLY:
            if pattern.search(lit.value):
                return (
                    f"{fn}: the pattern uses {what}, RE2 syntax that the embedded engine's regex (ECMAScript) "
                    "rejects or never matches"
                )
    if fn == "sprintf" and "%q" in lit.value:
        return "sprintf: %q is not supported by the embedded engine (it prints %q literally); use %v"
    if fn == "time.parse_rfc3339_ns" and lit.value.endswith(("Z", "z")):
        return "time.parse_rfc3339_ns: the embedded engine rejects a trailing Z; write +00:00"
    return None


# The OPA built-ins the embedded engines lack (rego-cpp 1.5.2, asked with regopy's Interpreter.is_builtin): a
# constant, so that a gateway that does not run regopy never loads it (~12 MB); tests/test_memory.py checks it
# against the installed regopy.
_REGO_CPP_MISSING_NAMES = """
    all any cast_array cast_boolean cast_null cast_object cast_set cast_string
    crypto.x509.parse_and_verify_certificates_with_options graphql.is_valid graphql.parse graphql.parse_and_verify
    graphql.parse_query graphql.parse_schema graphql.schema_is_valid http.send json.match_schema json.verify_schema
    net.cidr_contains net.cidr_contains_matches net.cidr_expand net.cidr_intersects net.cidr_is_valid net.cidr_merge
    net.cidr_overlap net.lookup_ip_addr providers.aws.sign_req rego.metadata.chain rego.metadata.rule
    rego.parse_module set_diff strings.render_template trace
"""
REGO_CPP_MISSING = frozenset(_REGO_CPP_MISSING_NAMES.split())
_SUPPORTED = (_OPA_BUILTINS - REGO_CPP_MISSING) | _SPECIAL


def supported_builtins() -> frozenset[str]:
    """The OPA built-ins the embedded engines implement (by full name only)."""
    return _SUPPORTED


def lint_source(source: PolicySource) -> list[str]:
    """Every unsupported call in the policy, as ``file:line:col: message`` lines (empty when clean)."""
    masked = {name: mask(src) for name, src in source.modules.items()}
    syntax = syntax_errors(source, masked)
    if syntax:  # the rest would be read out of a misparsed text: report only what to fix first
        return syntax
    supported = supported_builtins()
    mods = [_scan(name, src) for name, src in sorted(source.modules.items())]
    defined: dict[str, set[str]] = {}
    partial_sets: dict[str, set[str]] = {}
    arity: dict[tuple[str, str], int] = {}
    errors = []
    for mod in mods:
        defined.setdefault(mod.package, set()).update(mod.heads)
        partial_sets.setdefault(mod.package, set()).update(mod.partial_sets)
        for fn, n, offset in mod.arities:
            seen = arity.setdefault((mod.package, fn), n)
            if seen != n:
                errors.append(
                    f"{source.where(mod.name, offset)}: function {fn} is defined with {n} and with {seen} "
                    "arguments: every definition of a function must take the same number (the embedded engine "
                    "aborts on this)"
                )
    namespaces = frozenset(n.split(".")[0] for n in _OPA_BUILTINS)
    errors += undefined_references(source, mods, frozenset(_OPA_BUILTINS) | _SPECIAL, namespaces)
    for mod in mods:
        for fn, start, after in mod.calls:
            first = fn.split(".")[0]
            message = None
            if fn in defined.get(mod.package, ()) or first == "data" or first in mod.aliases:
                pass  # functions of this policy: gateway/policy/references.py checks that they exist
            elif fn in supported:
                lit = _literal_arg(mod, after)
                message = _check_literal(fn, lit) if lit else None
                takes = _BUILTIN_ARITY.get(fn)
                n = call_args(mod.masked, after)
                if message is None and takes is not None and n not in (takes, takes + 1):
                    message = (
                        f"{fn} takes {takes} argument{'' if takes == 1 else 's'}, called with {n} (the "
                        "embedded engine compiles this and fails, or crashes, when it runs)"
                    )
            elif fn in _OPA_BUILTINS:
                message = f"{fn} is not a built-in the embedded engine supports"
            elif "." in fn:
                message = f"{fn} is not a built-in (of OPA or of the embedded engine)"
            else:
                message = f"{fn} is neither a function of package {mod.package} nor a supported built-in"
            if message:
                errors.append(f"{source.where(mod.name, start)}: {message} (see {DOC})")
        for rule, offset in mod.defaults.items():
            if rule in partial_sets.get(mod.package, ()):
                errors.append(
                    f"{source.where(mod.name, offset)}: default {rule}: {rule} is a partial set (contains), "
                    "which is always defined (empty when no rule adds to it); a default is an error"
                )
        for offset in mod.withs:
            errors.append(
                f"{source.where(mod.name, offset)}: 'with' is not supported by the embedded engine (it fails, or "
                f"aborts the process, when the rule it applies to calls a built-in); test with tables (see {DOC})"
            )
        for offset, arg in mod.captured_args:
            errors.append(
                f"{source.where(mod.name, offset)}: function argument {arg} used as a key inside a comprehension: "
                f"the embedded engine ignores it there; bind it first ({arg}_ := {arg}) and use that (see {DOC})"
            )
    return errors


def check(source: PolicySource) -> None:
    errors = lint_source(source)
    if errors:
        raise PolicyError(errors)
