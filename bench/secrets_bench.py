"""Micro-benchmark of secret scanning: CPU µs per call for a 1 KB argument set and a 64 KB result.

Compares the gateway's scanner (per-detector patterns behind literal prefilters, gateway/secrets/) with one
combined alternation of the same patterns (no prefilter) and, when it is importable, detect-secrets (not a
dependency of the gateway: install it in a scratch venv to compare). Each is measured on clean inputs (the common
case) and on inputs carrying secrets.

    python bench/secrets_bench.py [--n 200]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import re
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures.fake_secrets import aws_access_key, rsa_private_key_pem

from gateway.secrets import Scanner
from gateway.secrets.detectors import DETECTORS


def _words(rng: random.Random) -> list[str]:
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 10))) for _ in range(2000)]


def inputs(secret: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    rng = random.Random(7)
    words = _words(rng)
    args: dict[str, Any] = {
        "query": "select id, name from users where team = 'platform' order by name",
        "path": "src/app/main.py",
        "env": {"HOME": "/home/agent", "LANG": "C.UTF-8", "CI": "true"},
        "items": [" ".join(rng.choice(words) for _ in range(4)) for _ in range(12)],
        "text": " ".join(rng.choice(words) for _ in range(90)),
    }
    lines = []
    for i in range(1200):  # what tools return: prose, log lines, code
        w = [rng.choice(words) for _ in range(6)]
        lines.append(
            [
                " ".join(w).capitalize() + ".",
                f"2026-12-03T19:41:{i % 60:02d}Z INFO request_id={rng.getrandbits(32):08x} path=/api/v1/{w[0]} "
                f"status=200 duration_ms={rng.random() * 50:.1f} user={w[1]}@example.com",
                f"    def {w[0]}_{w[1]}(self, {w[2]}: str) -> dict[str, Any]:  # {w[3]}-{w[4]}",
            ][i % 3]
        )
    text = "\n".join(lines)[:65536]
    if secret:
        args["env"]["AWS_ACCESS_KEY_ID"] = aws_access_key()
        text = text[:30000] + "\n" + rsa_private_key_pem() + "\n" + aws_access_key() + "\n" + text[32000:]
    result = {"content": [{"type": "text", "text": text[:65536]}], "isError": False}
    return args, result


def timed(fn: Callable[[], Any], n: int) -> float:
    """CPU µs per call (process time: on a shared, loaded machine wall time mostly measures the others)."""
    fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200)
    n = p.parse_args().n
    scanner = Scanner()
    ungated = Scanner([dataclasses.replace(d, gate="") for d in DETECTORS])
    unnamed = [re.sub(r"\(\?P<\w+>", "(", d.pattern.pattern.replace("(?i)", "")) for d in DETECTORS]
    combined = re.compile("|".join(f"(?:{p})" for p in unnamed), re.I)

    def combined_scan(value: Any) -> list[str]:
        out: list[str] = []
        stack = [value]
        while stack:
            v = stack.pop()
            if isinstance(v, str):
                out += [m.group(0) for m in combined.finditer(v)]
            elif isinstance(v, dict):
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)
        return out

    try:
        from detect_secrets.core.scan import scan_line
        from detect_secrets.settings import default_settings
    except ImportError:
        scan_line = None

    small = timed(lambda: scanner.scan({"text": "hello"}, "arguments", "arguments"), n * 10)
    small += timed(lambda: scanner.scan({"content": [{"type": "text", "text": "hello"}]}, "result", "result"), n * 10)
    print(f"a bench_calls.py echo call (arguments and result): {small:.1f} µs")
    print(f"{'case':34} {'gateway µs':>12} {'no gates µs':>12} {'combined re µs':>15} {'detect-secrets µs':>18}")
    for secret in (False, True):
        args, result = inputs(secret)
        for label, value, root, k in (
            ("1 KB arguments", args, "arguments", n),
            ("64 KB result", result, "result", n // 4),
        ):
            ours = timed(lambda v=value, r=root: scanner.scan(copy.deepcopy(v), r, r, redact=True), k)
            plain = timed(lambda v=value, r=root: ungated.scan(copy.deepcopy(v), r, r, redact=True), k)
            base = timed(lambda v=value: copy.deepcopy(v), k)
            ours, plain = ours - base, plain - base
            comb = timed(lambda v=value: combined_scan(v), max(1, k // 10))
            ds = "-"
            if scan_line is not None:
                with default_settings():

                    def run_ds(value: Any = value) -> None:
                        for s in _texts(value):
                            for line in s.splitlines():
                                list(scan_line(line))

                    ds = f"{timed(run_ds, max(1, k // 50)):.0f}"
            name = f"{label} ({'with secrets' if secret else 'clean'})"
            print(f"{name:34} {ours:12.1f} {plain:12.1f} {comb:15.0f} {ds:>18}")


def _texts(value: Any) -> list[str]:
    out, stack = [], [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return out


if __name__ == "__main__":
    main()
