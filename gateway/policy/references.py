"""Names a policy uses but never defines, found at load time (rego-cpp compiles them and fails only when used).

OPA refuses these when it compiles a policy; rego-cpp compiles them, and every decision that reaches one then
fails with a message that names neither the name nor the place. Found here, with file:line:col:

- calls to functions that the package they go through does not define (``lib.in_workspcae(p)`` through
  ``import data.gateway.lib``, ``data.gateway.lib.f(x)``, ``import data.gateway.lib as l``), and calls with a
  number of arguments no definition takes;
- references to rules that a package does not define (``lib.is_cal``, ``data.gateway.teams.platform.denny``);
- variables that nothing binds (``decision := lib.decide(deny, grants, containment)`` in a package that defines
  no ``deny``): OPA's "var is unsafe".

A scanner over the masked source (comments and strings blanked), like the rest of the lint: it errs on the side
of saying nothing when it cannot tell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.policy.loader import PolicySource

_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_]\w*)")
IMPORT = re.compile(r"^\s*import\s+([\w.]+)(?:\s+as\s+(\w+))?", re.M)
_STATEMENT = re.compile(
    r"^[ \t]*(?!(?:else|if|not|some|every|with|contains|in|as)\b)(?:default\s+)?([A-Za-z_]\w*)", re.M
)
_DOTTED = re.compile(r"(?<![\w.$])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)")
# Rego's keywords and literals: never a call or a rule reference.
REGO_KEYWORDS = frozenset(
    {
        "package",
        "import",
        "as",
        "default",
        "else",
        "not",
        "some",
        "every",
        "with",
        "in",
        "if",
        "contains",
        "true",
        "false",
        "null",
    }
)
_KEYWORDS = REGO_KEYWORDS | {"input", "data", "_", "future", "rego"}


class _Scanned(Protocol):
    name: str
    masked: str
    package: str
    calls: list[tuple[str, int, int]]
    arities: list[tuple[str, int, int]]


@dataclass
class _Package:
    rules: set[str]
    arities: dict[str, set[int]]


def _statements(masked: str, depth: list[int]) -> list[tuple[int, int, str]]:
    """(start, end, rule name) of each top-level statement (a rule with its else chain; package/import lines)."""
    starts = [(m.start(), m.group(1)) for m in _STATEMENT.finditer(masked) if depth[m.start()] == 0]
    out = []
    for k, (start, name) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(masked)
        out.append((start, end, name))
    return out


def bracket_depths(masked: str) -> list[int]:
    """The bracket nesting depth at each offset of the masked source."""
    depth, out = 0, []
    for ch in masked:
        out.append(depth)
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth = max(0, depth - 1)
    return out


def call_args(masked: str, after_paren: int) -> int:
    """How many arguments the call whose ``(`` ends at ``after_paren`` passes."""
    depth, count, seen = 0, 0, False
    for i in range(after_paren, len(masked)):
        ch = masked[i]
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            if depth == 0:
                return count + (1 if seen else 0)
            depth -= 1
        elif ch == "," and depth == 0:
            count += 1
            seen = False
            continue
        if not ch.isspace():
            seen = True
    return count + (1 if seen else 0)


def _last_arg(masked: str, after_paren: int) -> tuple[int, int] | None:
    """The span of the last of two or more arguments of the call whose ``(`` ends at ``after_paren``."""
    depth, last, commas = 0, after_paren, 0
    for i in range(after_paren, len(masked)):
        ch = masked[i]
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            if depth == 0:
                return (last, i) if commas else None
            depth -= 1
        elif ch == "," and depth == 0:
            last, commas = i + 1, commas + 1
    return None


def _bound(stmt: str) -> set[str]:
    """Every name the statement could bind: assigned or unified, declared with some/every, iterated in a ref's
    brackets, a function's parameter, or inside a pattern on the left of := or =. Generous on purpose."""
    names: set[str] = set()
    depth = bracket_depths(stmt)
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_]\w*)\s*(?::=|=(?!=))", stmt):  # x := ..., x = ...
        names.add(m.group(1))
    for m in re.finditer(r"(?<![=!<>:])=(?!=)\s*([A-Za-z_]\w*)\b(?!\s*[.(\[])", stmt):  # ... = x
        names.add(m.group(1))
    for m in re.finditer(r"\b(?:some|every)\s+([^\n;{]*?)(?:\bin\b|$|;|\{)", stmt, re.M):  # some x, y in / some x
        names.update(_IDENT.findall(m.group(1)))
    for i, ch in enumerate(stmt):
        if ch == "[" and i > 0 and (stmt[i - 1].isalnum() or stmt[i - 1] in "_])"):  # ref[x]: iteration binds x
            close = _close(stmt, i)
            names.update(_IDENT.findall(stmt[i + 1 : close]))
        elif ch in "[{" and depth[i] >= 0:  # a pattern: [a, b] := ..., {"k": v} = ...
            close = _close(stmt, i)
            if re.match(r"\s*(?::=|=(?!=))", stmt[close + 1 :]):
                names.update(_IDENT.findall(stmt[i + 1 : close]))
    head = re.match(r"\s*(?:default\s+)?[A-Za-z_][\w.]*\s*\(([^()]*)\)", stmt)
    if head:
        names.update(_IDENT.findall(head.group(1)))
    return names


def _close(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "{[(":
            depth += 1
        elif text[i] in "}])":
            depth -= 1
            if depth == 0:
                return i
    return len(text) - 1


def _aliases(masked: str) -> dict[str, str]:
    """Import alias -> the data path it stands for (``lib`` -> ``gateway.lib``)."""
    out = {}
    for m in IMPORT.finditer(masked):
        path, alias = m.group(1), m.group(2)
        parts = path.split(".")
        if parts[0] == "data" and len(parts) > 1:
            out[alias or parts[-1]] = ".".join(parts[1:])
    return out


def _in_data(data: Any, parts: list[str]) -> bool:
    for p in parts:
        if not isinstance(data, dict) or p not in data:
            return False
        data = data[p]
    return True


def undefined_references(
    source: PolicySource, mods: Iterable[_Scanned], builtins: frozenset[str], namespaces: frozenset[str]
) -> list[str]:
    """Every use of a name nothing defines, as ``file:line:col: message`` lines."""
    mods = list(mods)
    packages: dict[str, _Package] = {}
    statements: dict[str, list[tuple[int, int, str]]] = {}
    for mod in mods:
        entry = packages.setdefault(mod.package, _Package(set(), {}))
        statements[mod.name] = _statements(mod.masked, bracket_depths(mod.masked))
        entry.rules.update(n for _s, _e, n in statements[mod.name] if n not in ("package", "import"))
        for fn, n, _offset in mod.arities:
            entry.arities.setdefault(fn, set()).add(n)
    names = sorted(packages, key=len, reverse=True)

    def resolve(path: str) -> tuple[str, str] | None:
        """(package, the rest) for a data path into a package of this policy, longest package first."""
        for p in names:
            if p and path.startswith(p + "."):
                return p, path[len(p) + 1 :]
        return None

    def is_prefix(path: str) -> bool:
        return any(p == path or p.startswith(path + ".") for p in names)

    errors: list[str] = []
    for mod in mods:
        aliases = _aliases(mod.masked)
        own = packages[mod.package]

        def full_path(dotted: str, aliases: dict[str, str] = aliases) -> str | None:
            first, _, rest = dotted.partition(".")
            if first == "data":
                return rest
            if first in aliases:
                return aliases[first] + ("." + rest if rest else "")
            return None

        # Calls: through an import or data.*, and to the package's own functions (arity).
        for fn, start, after in mod.calls:
            path = full_path(fn)
            where = source.where(mod.name, start)
            if path is None:
                if fn in own.arities:
                    _arity(errors, where, fn, mod.package, own.arities[fn], call_args(mod.masked, after))
                continue
            found = resolve(path)
            if found is None or "." in found[1]:
                errors.append(
                    f"{where}: {fn}: no package of this policy defines a function {path.rsplit('.', 1)[-1]} "
                    f"at data.{path}"
                )
                continue
            pkg, rule = found
            if rule not in packages[pkg].rules:
                errors.append(f"{where}: {fn} is not defined: package {pkg} has no function {rule}")
            elif rule in packages[pkg].arities:
                _arity(errors, where, fn, pkg, packages[pkg].arities[rule], call_args(mod.masked, after))

        # References (not calls) into a package: lib.is_cal, data.gateway.teams.platform.denny.
        for m in _DOTTED.finditer(mod.masked):
            if mod.masked[m.end() :].lstrip().startswith("("):
                continue
            line_start = mod.masked.rfind("\n", 0, m.start()) + 1
            if mod.masked[line_start : m.start()].strip() in ("package", "import"):
                continue
            path = full_path(m.group(1))
            if path is None:
                continue
            parts = path.split(".")
            for k in range(len(parts) - 1, 0, -1):  # the longest package the path goes through
                pkg = ".".join(parts[:k])
                if pkg not in packages:
                    continue
                rule = parts[k]
                if (
                    rule not in packages[pkg].rules
                    and not is_prefix(f"{pkg}.{rule}")
                    and not _in_data(source.data, parts[: k + 1])
                ):
                    errors.append(
                        f"{source.where(mod.name, m.start())}: {m.group(1)} is not defined: package "
                        f"{pkg} has no rule {rule}"
                    )
                break

        # Variables nothing binds (OPA: "var is unsafe").
        imported = {m.group(2) or m.group(1).split(".")[-1] for m in IMPORT.finditer(mod.masked)}
        known = own.rules | imported | builtins | namespaces | _KEYWORDS
        for start, end, name in statements[mod.name]:
            if name in ("package", "import"):
                continue
            stmt = mod.masked[start:end]
            bound = _bound(stmt)
            for fn, at, after in mod.calls:  # an output argument: walk(x, [path, value]), f(x, y) binds y
                if not start <= at < end:
                    continue
                path = full_path(fn)
                found = resolve(path) if path is not None else None
                arities = packages[found[0]].arities.get(found[1]) if found else own.arities.get(fn)
                if arities and call_args(mod.masked, after) - 1 not in arities:
                    continue  # a function of this policy called without an output argument
                span = _last_arg(mod.masked, after)
                if span is not None:
                    bound.update(_IDENT.findall(mod.masked[span[0] : span[1]]))
            for m in _IDENT.finditer(stmt):
                ident = m.group(1)
                if ident in known or ident in bound or ident.startswith("_"):
                    continue
                if stmt[m.end() :].lstrip().startswith("("):
                    continue  # a call: checked above (and by the built-in lint)
                errors.append(
                    f"{source.where(mod.name, start + m.start())}: {ident} is undefined: not a rule of package "
                    f"{mod.package}, an import, a built-in, nor a variable this rule binds"
                )
                bound.add(ident)  # once per rule
    return errors


def _arity(errors: list[str], where: str, fn: str, pkg: str, arities: set[int], n: int) -> None:
    # A call may pass one more argument than the function takes: the output (f(x, y) binds y to f(x)).
    if n in arities or n - 1 in arities:
        return
    want = " or ".join(str(a) for a in sorted(arities))
    errors.append(
        f"{where}: {fn} takes {want} argument{'s' if want != '1' else ''} (function of package {pkg}), called with {n}"
    )
