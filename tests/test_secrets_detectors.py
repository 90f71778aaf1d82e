"""The detectors on real-format positives (generated) and near-miss negatives; the scanner's paths, redaction,
allow lists and overrides; [secrets] validation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.secrets import KINDS, Scanner, SecretScanning, SecretsConfig
from gateway.secrets.detectors import DETECTORS
from tests.fixtures.fake_secrets import NEGATIVES, aws_access_key, positives, rsa_private_key_pem

SCANNER = Scanner()


def test_every_detector_has_positives() -> None:
    assert set(positives()) == KINDS == {d.kind for d in DETECTORS}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_detector_finds_its_real_format(kind: str) -> None:
    for _ in range(5):  # fresh random values each round
        for text in positives()[kind]:
            assert [k for k, _, _ in SCANNER.find_in_text(text)] == [kind], text[:60]


@pytest.mark.parametrize("text", NEGATIVES)
def test_near_misses_are_not_findings(text: str) -> None:
    assert SCANNER.find_in_text(text) == []


def test_a_private_key_is_found_whole_and_a_truncated_one_too() -> None:
    pem = rsa_private_key_pem()
    text = f"before\n{pem}after"
    [(kind, start, end)] = SCANNER.find_in_text(text)
    assert (kind, text[start:end]) == ("private-key", pem.rstrip("\n"))
    cut = pem[:300]
    [(kind, start, end)] = SCANNER.find_in_text(cut + "\n}")
    assert kind == "private-key" and start == 0 and end >= 290


def test_arguments_findings_name_their_paths_never_values() -> None:
    key = aws_access_key()
    args = {"env": {"TOKEN": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"}, "items": ["a", "b", key], "a.b": {"c": [key]}}
    found = SCANNER.scan(args, "arguments", "arguments")
    assert {f.as_dict()["path"]: f.kind for f in found} == {
        "arguments.env.TOKEN": "generic-secret",
        "arguments.items[2]": "aws-access-key",
        'arguments["a.b"].c[0]': "aws-access-key",
    }
    assert all(key not in str(f.as_dict()) for f in found)


def test_results_are_redacted_in_place() -> None:
    key = aws_access_key()
    result = {"content": [{"type": "text", "text": f"id {key} and\n{rsa_private_key_pem()}done"}], "isError": False}
    found = SCANNER.scan(result, "result", "result", redact=True)
    assert {f.kind for f in found} == {"aws-access-key", "private-key"}
    assert result["content"][0]["text"] == "id [redacted: aws-access-key] and\n[redacted: private-key]\ndone"


def test_a_specific_kind_wins_over_the_generic_one() -> None:
    text = f"GITHUB_TOKEN=ghp_{'a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8'}"
    assert [k for k, _, _ in SCANNER.find_in_text(text)] == ["github-token"]


def test_key_names_as_context_need_a_random_looking_value() -> None:
    assert SCANNER.scan({"password": "correct-horse"}, "arguments", "arguments") == []
    assert SCANNER.scan({"token_count": "12345678901234567890"}, "arguments", "arguments") == []
    assert [f.kind for f in SCANNER.scan({"db_password": "Zx8kq2LmN4pR7sT9"}, "arguments", "arguments")] == [
        "generic-secret"
    ]


def test_allow_patterns_and_digests_and_kinds() -> None:
    key = aws_access_key()
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert Scanner(allow_digests=[digest]).find_in_text(key) == []
    assert Scanner(allow=[r"AKIA[A-Z2-7]{16}"]).find_in_text(key) == []
    assert Scanner(allow=[r"AKIA"]).find_in_text(key) != []  # a pattern must match the whole value
    assert Scanner([d for d in DETECTORS if d.kind != "aws-access-key"]).find_in_text(key) == []


def test_overrides_apply_per_server_and_tool() -> None:
    cfg = SecretsConfig.model_validate(
        {
            "on_result": "redact",
            "overrides": [
                {"server": "docs", "tool": "*", "kinds": {"jwt": False}},
                {"server": "docs", "tool": "fetch_*", "on_result": "withhold", "scan_arguments": False},
            ],
        }
    )
    s = SecretScanning(cfg)
    assert "jwt" in s.rules("time", "now").scanner.kinds
    docs = s.rules("docs", "read")
    assert "jwt" not in docs.scanner.kinds and docs.on_result == "redact" and docs.scan_arguments
    fetch = s.rules("docs", "fetch_page")
    assert fetch.on_result == "withhold" and not fetch.scan_arguments and "jwt" not in fetch.scanner.kinds


def test_deeply_nested_values_are_scanned_without_recursion() -> None:
    value: object = aws_access_key()
    for _ in range(5000):
        value = [value]
    assert [f.kind for f in SCANNER.scan({"v": value}, "arguments", "arguments")] == ["aws-access-key"]


def test_text_whose_lower_case_is_longer_keeps_positions() -> None:
    text = "İİİ password = 'Zx8kq2LmN4pR7sT9vW1yB3' and İ"
    [(kind, start, end)] = SCANNER.find_in_text(text)
    assert (kind, text[start:end]) == ("generic-secret", "Zx8kq2LmN4pR7sT9vW1yB3")


@pytest.mark.parametrize(
    ("secrets", "error"),
    [
        ({"kinds": {"nope": False}}, "secrets.kinds: unknown detector nope"),
        ({"allow": ["("]}, "secrets.allow: allow pattern '(' is not a valid regular expression"),
        ({"allow_digests": ["abc"]}, "secrets.allow_digests[0]: String should match pattern"),
        ({"on_result": "drop"}, "secrets.on_result: Input should be 'redact' or 'withhold'"),
        ({"overrides": [{"tool": "x", "kinds": {"jwt2": True}}]}, "secrets.overrides[0].kinds: unknown detector jwt2"),
        ({"scan_result": False}, "secrets.scan_result: unknown key"),
    ],
)
def test_bad_secrets_config_is_refused_at_load(tmp_path: Path, secrets: dict, error: str) -> None:
    (tmp_path / "rego").mkdir()
    with pytest.raises(ConfigError) as exc:
        parse_config({"policy": {"path": "rego"}, "secrets": secrets}, "gw.toml", tmp_path)
    assert any(e.startswith(f"gw.toml: {error}") for e in exc.value.errors), exc.value.errors


@pytest.mark.parametrize("detector", [d for d in DETECTORS if d.prefix is not None], ids=lambda d: d.kind)
def test_a_prefix_regex_finds_every_anchor_of_its_detector(detector) -> None:  # type: ignore[no-untyped-def]
    """The one-pass prefix regex stands in for the anchors: it must find each of them."""
    assert detector.prefix is not None
    for anchor in detector.anchors:
        assert detector.prefix.match(anchor), anchor
