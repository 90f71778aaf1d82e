"""deploy/kubernetes/: every manifest validates offline against the Kubernetes API schemas (kubernetes-validate,
strict: an unknown field is an error), the ConfigMap's gateway.toml is a valid gateway configuration, and the
gateway pod's securityContext is exactly what the sandbox tier needs (docs/fleet.md, "Kubernetes")."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import Config
from tests.conftest import REPO

KUBERNETES = "1.33.0"
"""User namespaces (hostUsers: false) and ProcMountType are on by default from 1.33."""
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def _kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in _docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name)
    return found[0]


def test_every_kind_the_deployment_needs_is_there() -> None:
    kinds = sorted({d["kind"] for _, d in _docs()})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
    assert {d["metadata"]["name"] for _, d in _docs() if d["kind"] == "Deployment"} == {
        "mcp-gateway",
        "mcp-gateway-redis",
    }


@pytest.mark.parametrize("name, doc", _docs(), ids=[n for n, _ in _docs()])
def test_manifest_validates_against_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_validation_catches_a_wrong_field() -> None:
    """The check is real: a misspelt field or a wrong type fails it."""
    doc = _kind("Deployment", "mcp-gateway")
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)


def test_the_configmap_holds_a_valid_gateway_config() -> None:
    text = _kind("ConfigMap")["data"]["gateway.toml"]
    rendered = text.replace("@POD_IP@", "10.0.3.7").replace("@REDIS_PASSWORD@", "0123abcd")
    cfg = Config.model_validate({**tomllib.loads(rendered), "base_dir": Path("/etc/mcp-gateway")})
    assert cfg.policy.bundle_url and cfg.policy.bundle_public_key_file and cfg.decision_logs is not None
    assert cfg.fleet is not None and cfg.fleet.advertise == "http://10.0.3.7:8080"
    assert cfg.containment is not None
    # the pod's user namespace maps 65536 uids: every agent's uid must fall inside it
    assert cfg.containment.uid_base + cfg.containment.uid_count <= 65536
    # the secrets it names are the Secret's keys, at the Deployment's mount
    secret_keys = set(_kind("Secret")["stringData"])
    named = [cfg.policy.bundle_token_file, cfg.policy.bundle_public_key_file, cfg.fleet.secret_file]
    named += [cfg.decision_logs.token_file, cfg.identity.jwt.jwks_file if cfg.identity.jwt else None]
    for path in named:
        assert path is not None and path.startswith("/etc/mcp-gateway/secrets/")
        assert path.rsplit("/", 1)[1] in secret_keys
    pod = _kind("Deployment", "mcp-gateway")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > cfg.decision_logs.drain_timeout_s + 10


def test_the_gateway_pod_gets_what_bubblewrap_needs_and_no_more() -> None:
    pod = _kind("Deployment", "mcp-gateway")["spec"]["template"]["spec"]
    assert pod["hostUsers"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    assert pod["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["procMount"] == "Unmasked" and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {
        "drop": ["ALL"],
        "add": ["SETUID", "SETGID", "CHOWN", "FOWNER", "DAC_OVERRIDE", "KILL"],
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert pod["automountServiceAccountToken"] is False


def test_redis_is_reachable_from_the_gateway_only() -> None:
    policy = _kind("NetworkPolicy", "mcp-gateway-redis")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/name": "mcp-gateway", "app.kubernetes.io/component": "gateway"}
            }
        }
    ]
    admin = [r for r in _kind("NetworkPolicy", "mcp-gateway")["spec"]["ingress"] if r["ports"][0]["port"] == 9464]
    assert admin[0]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
