"""install/kubernetes against a real API server, with the real kubectl (tests/k8s_harness.py).

The CRDs are applied for real and become Established; TracingPolicies of Tetragon's corpus are accepted
and malformed ones refused by the CRD schema at apply; the DaemonSet and the rest of the kustomization
pass a server-side dry run; `kubectl auth can-i --as` shows the agent's RBAC is what it needs and no more.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import time

import pytest
import yaml

from tests.k8s_harness import AGENT_USER, MANIFESTS, ControlPlane

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "tetragon-policies"
CRD_NAMES = ("tracingpolicies.cilium.io", "tracingpoliciesnamespaced.cilium.io")


@pytest.fixture(scope="module")
def crds(k8s: ControlPlane) -> ControlPlane:
    k8s.kubectl("apply", "--server-side", "-f", str(MANIFESTS / "crds.yaml"))
    deadline = time.monotonic() + 60  # kubectl wait fails on a CRD whose status has no conditions yet: poll
    for n in CRD_NAMES:
        while k8s.kubectl("get", f"crd/{n}", "-o", "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                          check=False).stdout.strip() != "True":
            assert time.monotonic() < deadline, f"CRD {n} not Established after 60 s"
            time.sleep(0.2)
    return k8s


def _apply(cp: ControlPlane, doc: str, *args: str):
    return cp.kubectl("apply", "-f", "-", *args, stdin=textwrap.dedent(doc), check=False)


# ------------------------------------------------------------------------------------------- CRDs
def test_crds_are_established_with_tetragons_names(crds: ControlPlane) -> None:
    for name in CRD_NAMES:
        obj = json.loads(crds.kubectl("get", "crd", name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
        assert conditions["Established"] == conditions["NamesAccepted"] == "True"
        assert obj["status"]["acceptedNames"]["categories"] == ["tetragon"]
    resources = crds.kubectl("api-resources", "--api-group=cilium.io", "-o", "wide").stdout
    assert "tgtp " in resources and "tgtpn " in resources


def test_the_whole_corpus_is_accepted_by_the_crd_schema(crds: ControlPlane, k8s_namespace: str) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} is absent")
    files = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".yaml", ".yml"))
    args = [a for f in files for a in ("-f", str(f))]
    proc = crds.kubectl("apply", "--dry-run=server", "-n", k8s_namespace, *args, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") >= len(files)


def test_a_corpus_policy_is_stored_and_listed_by_short_name_and_category(crds: ControlPlane) -> None:
    policy = yaml.safe_load((CORPUS / "sys_setuid.yaml").read_text()) if CORPUS.is_dir() else None
    if policy is None:
        pytest.skip(f"{CORPUS} is absent")
    policy["metadata"]["name"] = "corpus-sys-setuid"
    crds.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(policy))
    try:
        assert crds.kubectl("get", "tgtp", "-o", "name").stdout.split() == \
            ["tracingpolicy.cilium.io/corpus-sys-setuid"]
        assert "corpus-sys-setuid" in crds.kubectl("get", "tetragon", "-A").stdout
        stored = json.loads(crds.kubectl("get", "tgtp", "corpus-sys-setuid", "-o", "json").stdout)["spec"]
        kprobe, wanted = stored["kprobes"][0], policy["spec"]["kprobes"][0]
        assert {k: kprobe[k] for k in wanted if k != "args"} == {k: v for k, v in wanted.items() if k != "args"}
        # The CRD's defaults were applied by the API server, as Tetragon's CRD does.
        assert (kprobe["syscall"], kprobe["return"]) == (wanted.get("syscall", True), False)
        assert kprobe["args"][0]["maxData"] is False and kprobe["args"][0]["resolve"] == ""
    finally:
        crds.kubectl("delete", "tgtp", "corpus-sys-setuid", check=False)


BAD_TYPE = """
    apiVersion: cilium.io/v1alpha1
    kind: TracingPolicy
    metadata: {name: bad-type}
    spec:
      kprobes:
      - call: sys_setuid
        syscall: "yes"
"""
BAD_OPERATOR = """
    apiVersion: cilium.io/v1alpha1
    kind: TracingPolicyNamespaced
    metadata: {name: bad-operator}
    spec:
      kprobes:
      - call: sys_setuid
        selectors:
        - matchArgs:
          - {index: 0, operator: Prefx, values: ["0"]}
"""
BAD_CEL = """
    apiVersion: cilium.io/v1alpha1
    kind: TracingPolicyNamespaced
    metadata: {name: bad-host-selector}
    spec:
      hostSelector: {}
      kprobes:
      - call: sys_setuid
"""


@pytest.mark.parametrize("doc,expected", [
    (BAD_TYPE, 'spec.kprobes[0].syscall: Invalid value: "string": spec.kprobes[0].syscall in body must be of type '
               'boolean'),
    (BAD_OPERATOR, 'spec.kprobes[0].selectors[0].matchArgs[0].operator: Unsupported value: "Prefx"'),
    (BAD_CEL, "TracingPolicyNamespaced should have a null spec.hostSelector"),
], ids=["wrong-type", "unknown-operator", "cel-rule"])
def test_invalid_policies_are_refused_at_apply(crds: ControlPlane, k8s_namespace: str, doc: str,
                                               expected: str) -> None:
    proc = _apply(crds, doc, "-n", k8s_namespace)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert crds.kubectl("get", "tetragon", "-A", "-o", "name").stdout.strip() == ""


# --------------------------------------------------------------------------------- the DaemonSet
def test_kustomization_passes_a_server_side_dry_run(crds: ControlPlane) -> None:
    proc = crds.kubectl("apply", "-k", str(MANIFESTS), "--dry-run=server")
    for kind in ("serviceaccount/lanner", "clusterrole.rbac.authorization.k8s.io/lanner",
                 "clusterrolebinding.rbac.authorization.k8s.io/lanner", "configmap/lanner-config",
                 "daemonset.apps/lanner", "customresourcedefinition.apiextensions.k8s.io/tracingpolicies.cilium.io",
                 "customresourcedefinition.apiextensions.k8s.io/lannernodes.lanner.io"):
        assert f"{kind} " in proc.stdout and "(server dry run)" in proc.stdout, proc.stdout
    assert crds.kubectl("get", "ds", "-n", "kube-system", "-o", "name").stdout.strip() == ""


def _rendered(cp: ControlPlane, path: Path) -> dict[str, dict]:
    docs = yaml.safe_load_all(cp.kubectl("kustomize", str(path)).stdout)
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


@pytest.fixture(scope="module")
def rendered(k8s: ControlPlane) -> dict[str, dict]:
    """install/kubernetes as `kubectl kustomize` renders it (kind/name -> object)."""
    return _rendered(k8s, MANIFESTS)


def test_daemonset_shape(rendered: dict[str, dict]) -> None:
    ds = rendered["DaemonSet/lanner"]
    pod = ds["spec"]["template"]["spec"]
    agent, sidecar = pod["containers"]
    assert (ds["metadata"]["namespace"], pod["serviceAccountName"]) == ("kube-system", "lanner")
    assert agent["securityContext"]["privileged"] is True and pod["hostPID"] is True
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    assert {"/procRoot", "/sys/fs/cgroup", "/var/run/lanner"} <= set(mounts)
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert agent["startupProbe"]["exec"]["command"][:2] == ["lanner", "status"]
    export_file = rendered["ConfigMap/lanner-config"]["data"]["EXPORT_FILENAME"]
    assert sidecar["name"] == "export-stdout" and export_file in sidecar["args"]


def test_agent_flags_in_the_configmap_are_real_agent_flags(rendered: dict[str, dict]) -> None:
    from lanner.cli import build_parser

    data = rendered["ConfigMap/lanner-config"]["data"]
    args = rendered["DaemonSet/lanner"]["spec"]["template"]["spec"]["containers"][0]["args"]
    expanded = []
    for arg in args:
        for key, value in data.items():
            arg = arg.replace(f"$({key})", value)
        expanded.append(arg)
    assert not any("$(" in a for a in expanded), expanded
    parsed = build_parser().parse_args(expanded)
    assert parsed.export_stdout is False
    assert parsed.enable_k8s_api is True and parsed.k8s_kubeconfig_path is None  # in-cluster config
    assert parsed.server_address == data["SERVER_ADDRESS"]
    assert parsed.health_server_address == data["HEALTH_SERVER_ADDRESS"] == ":6789"
    assert all(f"$({k})" in " ".join(args) for k in data), "a ConfigMap key no argument uses"


def test_image_is_a_kustomize_parameter(k8s: ControlPlane, rendered: dict[str, dict], tmp_path: Path) -> None:
    base = rendered["DaemonSet/lanner"]["spec"]["template"]["spec"]["containers"]
    assert {c["image"] for c in base} == {"lanner:latest"}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(MANIFESTS, tmp_path)], "images": [{"name": "lanner", "newName": "registry.test/lanner",
                                                   "newTag": "v9"}]}))
    over = _rendered(k8s, tmp_path)["DaemonSet/lanner"]["spec"]["template"]["spec"]["containers"]
    assert {c["image"] for c in over} == {"registry.test/lanner:v9"}


# ---------------------------------------------------------------------------------------- RBAC
ALLOWED = [
    ("list", "pods"), ("watch", "pods"), ("get", "nodes"), ("watch", "nodes"), ("list", "namespaces"),
    ("watch", "networkpolicies.networking.k8s.io"), ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "tracingpolicies.cilium.io"), ("watch", "tracingpolicies.cilium.io"),
    ("watch", "tracingpoliciesnamespaced.cilium.io"), ("create", "events"), ("patch", "events"),
    ("create", "events.events.k8s.io"), ("create", "lanneridentities.lanner.io"),
    ("delete", "lanneridentities.lanner.io"), ("update", "lannerendpoints.lanner.io"), ("get", "replicasets.apps"),
    # --kvstore crd: its LannerNode (created, renewed with update, watched) and a dead node's objects deleted
    ("create", "lannernodes.lanner.io"), ("update", "lannernodes.lanner.io"), ("watch", "lannernodes.lanner.io"),
    ("delete", "lannernodes.lanner.io"), ("watch", "lannerendpoints.lanner.io"), ("delete", "lannerendpoints.lanner.io"),
]
DENIED = [
    ("create", "pods"), ("delete", "pods"), ("delete", "nodes"), ("patch", "nodes"), ("get", "secrets"),
    ("list", "secrets"), ("create", "tracingpolicies.cilium.io"), ("update", "tracingpoliciesnamespaced.cilium.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"), ("create", "networkpolicies.networking.k8s.io"),
    ("get", "configmaps"), ("create", "serviceaccounts/token"), ("create", "pods/exec"), ("delete", "events"),
    ("create", "ciliumidentities.lanner.io"), ("delete", "lanneridentities.other.io"), ("update", "replicasets.apps"),
    ("patch", "lannernodes.lanner.io"), ("deletecollection", "lannerendpoints.lanner.io"),
    ("create", "leases.coordination.k8s.io"), ("update", "nodes/status"),
]


def _can_i(cp: ControlPlane, verb: str, resource: str) -> bool:
    """`kubectl auth can-i --as` the agent's ServiceAccount. lanner.io's CRDs (lanner-crds.yaml) are not
    applied in this module, so kubectl cannot resolve their kinds: those go as a SubjectAccessReview, which
    is what can-i sends, through kubectl too."""
    if not resource.endswith(".lanner.io"):
        proc = cp.kubectl("auth", "can-i", verb, resource, "-A", f"--as={AGENT_USER}", check=False)
        assert proc.stdout.strip() in ("yes", "no"), proc.stderr
        return proc.stdout.strip() == "yes"
    plural, group = resource.split(".", 1)
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": AGENT_USER, "groups": ["system:serviceaccounts", "system:authenticated"],
                       "resourceAttributes": {"verb": verb, "group": group, "resource": plural}}}
    out = cp.kubectl("create", "-f", "-", "-o", "json", stdin=json.dumps(review)).stdout
    return json.loads(out)["status"].get("allowed", False)


@pytest.mark.parametrize("verb,resource", ALLOWED + DENIED, ids=[f"{v}-{r}" for v, r in ALLOWED + DENIED])
def test_agent_rbac_can_i(crds: ControlPlane, verb: str, resource: str) -> None:
    assert _can_i(crds, verb, resource) is ((verb, resource) in ALLOWED)


# Granted to every authenticated user by Kubernetes' default roles (system:basic-user and friends).
DEFAULT_GRANTS = {
    "selfsubjectreviews.authentication.k8s.io": {"create"},
    "selfsubjectaccessreviews.authorization.k8s.io": {"create"},
    "selfsubjectrulesreviews.authorization.k8s.io": {"create"},
    "clustertrustbundles.certificates.k8s.io": {"get", "list", "watch"},
}


def _manifest_grants() -> dict[str, set[str]]:
    role = yaml.safe_load((MANIFESTS / "clusterrole.yaml").read_text())
    grants: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                grants.setdefault(f"{res}.{group}" if group else res, set()).update(rule["verbs"])
    return grants


def test_agent_rbac_rules_are_exactly_the_manifests(crds: ControlPlane) -> None:
    """The agent's own token lists its rules: exactly clusterrole.yaml plus Kubernetes' defaults."""
    rules = crds.kubectl("auth", "can-i", "--list", as_agent=True).stdout.splitlines()[1:]
    granted: dict[str, set[str]] = {}
    for line in rules:
        if line.startswith(" "):
            continue  # non-resource URLs (/healthz, /version...) of the default discovery roles
        resource, verbs = line.split()[0], line[line.rindex("[") + 1:line.rindex("]")].split()
        granted.setdefault(resource, set()).update(verbs)
    assert granted == {**_manifest_grants(), **DEFAULT_GRANTS}
    assert not any("*" in r or "*" in "".join(v) for r, v in granted.items())
