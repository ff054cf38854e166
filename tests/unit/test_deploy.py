"""deploy/kubernetes/: the manifests pass the Kubernetes schemas (kubernetes-validate, whose
wheel carries them, so no cluster and no network), fit together, and the Secret's wg-quick
text is what the router loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from wgslirp.config import load_config, unknown_variables
from wgslirp.keys import encode_key, generate_private_key, public_key

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
# the oldest Kubernetes still in common support, and the validator's newest
VERSIONS = ("1.29.0", None)


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((KUBE / name).read_text())
    return doc


def resources() -> list[str]:
    return [str(r) for r in load("kustomization.yaml")["resources"]]


def validate(paths: list[Path], version: str | None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict"]
    if version is not None:
        cmd += ["-k", version]
    return subprocess.run(
        [*cmd, *map(str, paths)], capture_output=True, text=True, timeout=120, check=False
    )


def container() -> dict[str, Any]:
    (c,) = load("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_kustomization_lists_every_manifest() -> None:
    files = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(resources()) == sorted(files)


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_pass_the_kubernetes_schemas(version: str | None) -> None:
    r = validate([KUBE / name for name in resources()], version)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") == len(resources()), r.stdout


def test_the_validator_rejects_a_broken_manifest(tmp_path: Path) -> None:
    """The check above can fail: a misspelt field and a wrong type are refused."""
    doc = load("deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # not "resources"
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert validate([bad], None).returncode != 0
    doc = load("service.yaml")
    doc["spec"]["ports"][0]["port"] = "fifty"
    bad.write_text(yaml.safe_dump(doc))
    assert validate([bad], None).returncode != 0


def test_the_pod_is_locked_down() -> None:
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    c = container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in sc["capabilities"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["cpu"]
    # the worker count comes from the CPU limit, read by the router from its cgroup
    assert "PROCESSOR_WORKERS" not in {e["name"] for e in c["env"]}


def test_pieces_fit_together() -> None:
    dep = load("deployment.yaml")
    pod = dep["spec"]["template"]
    c = container()
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = load("service.yaml")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert load("poddisruptionbudget.yaml")["spec"]["selector"]["matchLabels"].items() <= (
        labels.items()
    )
    ports = {p["name"]: p for p in c["ports"]}
    (sport,) = svc["spec"]["ports"]
    assert sport["protocol"] == "UDP" and ports[sport["targetPort"]]["protocol"] == "UDP"
    env = {e["name"]: e["value"] for e in c["env"]}
    metrics_port = int(env["METRICS_LISTEN"].rsplit(":", 1)[1])
    assert ports["metrics"]["containerPort"] == metrics_port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # --config names a file of the mounted Secret; mounted whole (a subPath is never
    # updated in place, and the router could not follow a change of the Secret)
    config = c["args"][c["args"].index("--config") + 1]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "config"]
    assert "subPath" not in mount
    assert Path(config).parent == Path(mount["mountPath"])
    (vol,) = [v for v in pod["spec"]["volumes"] if v["name"] == "config"]
    secret = load("secret.yaml")
    assert vol["secret"]["secretName"] == secret["metadata"]["name"]
    assert Path(config).name in secret["stringData"]


def secret_text() -> str:
    return str(load("secret.yaml")["stringData"]["wg0.conf"])


def pod_env(home: Path) -> dict[str, str]:
    env = {e["name"]: e["value"] for e in container()["env"]}
    return {"PATH": os.environ["PATH"], "HOME": str(home), **env}


def check_config(conf: Path, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgslirp", "check-config", "--config", str(conf)],
        env={**pod_env(home), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_secret_text_is_what_the_router_loads(tmp_path: Path) -> None:
    """The wg-quick text of the Secret, with its two placeholders filled in as the comment
    says, run through the router's own `check-config` with the pod's environment."""
    server = generate_private_key()
    client = public_key(generate_private_key())
    text = secret_text()
    assert text.count("REPLACE") == 2
    text = text.replace("REPLACE-with-the-output-of-wgslirp-genkey", encode_key(server)).replace(
        "REPLACE-with-the-client-public-key", encode_key(client)
    )
    conf = tmp_path / "wg0.conf"
    conf.write_text(text)
    conf.chmod(0o440)  # the Secret volume's defaultMode
    r = check_config(conf, tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["server_public_key"] == encode_key(public_key(server))
    assert cfg["listen_port"] == next(
        p["containerPort"] for p in container()["ports"] if p["name"] == "wireguard"
    )
    assert cfg["mtu"] == 1380
    assert cfg["metrics"]["listen"] == ["0.0.0.0", 9586]
    assert [(p["public_key"], p["allowed_ips"]) for p in cfg["peers"]] == [
        (encode_key(client), ["10.77.0.2/32"])
    ]
    # and the same through the loader the router runs, with nothing unknown in the pod env
    env = pod_env(tmp_path)
    assert unknown_variables(env) == []
    loaded = load_config(env, str(conf), resolve=lambda h: h, cpus=lambda: 2)
    assert loaded.private_key == server and loaded.processor_workers == 0
    assert loaded.config_poll == 2.0


def test_secret_as_shipped_is_refused_with_the_setting_named(tmp_path: Path) -> None:
    conf = tmp_path / "wg0.conf"
    conf.write_text(secret_text())
    r = check_config(conf, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    # one line naming the file and the key setting a placeholder is still in
    assert re.search(r"wg0\.conf \[\w+( \d+)?\] (PrivateKey|PublicKey): not valid", r.stderr)
