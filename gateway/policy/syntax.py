"""Syntax errors rego-cpp reports far from where they are: found first, at the place to fix.

rego-cpp reads an unclosed ``{`` as going on into the next rules and reports the error where its parse finally
fails (often dozens of lines later, or as unknown functions), and reads ``a && b`` as two broken set operators
(two errors at adjacent columns). These checks run on the masked source (comments and strings blanked) before
anything else, and name the opening bracket that is not closed, or the operator, once.
"""

from __future__ import annotations

import re

from gateway.policy.loader import PolicySource

_OPEN = {"{": "}", "[": "]", "(": ")"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_STATEMENT = re.compile(r"^(?:default\s+)?[A-Za-z_][\w.]*\s*(?:[\[({]|:=|=|contains\b|if\b|$)", re.M)
_OPERATORS = {
    "&&": "Rego has no && operator: write each condition on its own line of the body (or separate them with ;)",
    "||": "Rego has no || operator: write one rule per alternative (rules with the same name are or-ed)",
}


def _line_col(text: str, offset: int) -> str:
    return f"{text.count(chr(10), 0, offset) + 1}, column {offset - text.rfind(chr(10), 0, offset)}"


def _brackets(name: str, masked: str, source: PolicySource) -> list[str]:
    stack: list[tuple[str, int]] = []
    statements = {m.start() for m in _STATEMENT.finditer(masked) if not masked.startswith("else", m.start())}
    first_unclosed: tuple[str, int, int] | None = None
    for i, ch in enumerate(masked):
        if i in statements and stack and first_unclosed is None:
            first_unclosed = (stack[-1][0], stack[-1][1], i)  # a new rule starts while a bracket is still open
        if ch in _OPEN:
            stack.append((ch, i))
        elif ch in _CLOSE:
            if not stack:
                return [f"{source.where(name, i)}: this {ch} closes nothing (no {_CLOSE[ch]} is open here)"]
            opener, at = stack.pop()
            if opener != _CLOSE[ch]:
                return [
                    f"{source.where(name, i)}: this {ch} does not close the {opener} opened at line "
                    f"{_line_col(masked, at)}"
                ]
    if not stack:
        return []
    if first_unclosed is not None:
        opener, at, rule = first_unclosed
        line = masked.count("\n", 0, rule) + 1
        return [
            f"{source.where(name, at)}: this {opener} is not closed (a {_OPEN[opener]} is missing before the "
            f"rule that starts on line {line})"
        ]
    opener, at = stack[-1]
    return [f"{source.where(name, at)}: this {opener} is not closed (a {_OPEN[opener]} is missing)"]


def syntax_errors(source: PolicySource, masked: dict[str, str]) -> list[str]:
    """``file:line:col: message`` for each module's misplaced bracket and non-Rego operator (empty when none)."""
    errors: list[str] = []
    for name in sorted(masked):
        text = masked[name]
        errors += _brackets(name, text, source)
        for op, message in _OPERATORS.items():
            errors += [f"{source.where(name, m.start())}: {message}" for m in re.finditer(re.escape(op), text)]
    return errors
