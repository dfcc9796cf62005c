"""NetworkPolicies from the API (lanner.k8s.netpolicies) reach the datapath's set_network_policies beside the
files' ones: applied, refused by lanner's parser (left out, named in status), deleted; Namespace labels go
with them, and a namespace relabel re-evaluates the set when a policy has a namespaceSelector. The integration
runs in this process as the agent's identity against the session's control plane; the datapath is a
recorder (the enforcement on real pods is tests/test_k8s_netpol_e2e.py's job)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lanner.k8s.client import K8sConfig
from lanner.k8s.integration import K8sIntegration
from lanner.k8s.netpolicies import NetpolContext
from lanner.netdp.netpolicy import parse_network_policy
from tests.k8s_harness import ControlPlane


def _policy(name: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


DB = {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
      "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                   "ports": [{"protocol": "TCP", "port": 8080}]}]}
V6 = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "fd00::/64"}}]}]}


class Recorder:
    def __init__(self) -> None:
        self.sets: list[list[str]] = []
        self.namespaces: list[dict[str, dict[str, str]]] = []
        self.changed = threading.Condition()

    def __call__(self, policies: list, namespaces: dict[str, dict[str, str]]) -> None:
        with self.changed:
            self.sets.append([f"{p.namespace}/{p.name}" for p in policies])
            self.namespaces.append(namespaces)
            self.changed.notify_all()

    def wait(self, pred, timeout: float = 10.0) -> tuple[list[str], float]:
        t0 = time.monotonic()
        with self.changed:
            while not (self.sets and pred(self.sets[-1])):
                left = timeout - (time.monotonic() - t0)
                assert left > 0, self.sets[-3:]
                self.changed.wait(left)
            return self.sets[-1], time.monotonic() - t0


def test_network_policies_from_the_api_reach_the_datapath(k8s: ControlPlane, k8s_namespace: str) -> None:
    ns = k8s_namespace
    file_policy = parse_network_policy(_policy("from-file", "files", DB), "file.yaml")
    rec = Recorder()
    cfg = K8sConfig(node_name="netpol-test", kubeconfig=k8s.agent_kubeconfig, watch_pods=False)
    k = K8sIntegration(cfg, None, None, NetpolContext(rec, (file_policy,)))
    k.start()
    try:
        first, _ = rec.wait(lambda s: s[:1] == ["files/from-file"])  # after the first list: files + the API's
        k8s.kubectl("apply", "-f", "-", stdin=json.dumps(_policy("db", ns, DB)))
        got, t_apply = rec.wait(lambda s: f"{ns}/db" in s)
        assert got[0] == "files/from-file"
        k8s.kubectl("apply", "-f", "-", stdin=json.dumps(_policy("v6", ns, V6)))  # valid to the API, not to lanner
        deadline = time.monotonic() + 10
        while f"{ns}/v6" not in k.status()["network_policies"]["refused"]:
            assert time.monotonic() < deadline, k.status()
            time.sleep(0.05)
        assert f"{ns}/v6" not in rec.sets[-1] and f"{ns}/db" in rec.sets[-1]
        assert "ipBlock" in k.status()["network_policies"]["refused"][f"{ns}/v6"]
        k8s.kubectl("delete", "networkpolicy", "db", "v6", "-n", ns)
        _, t_delete = rec.wait(lambda s: f"{ns}/db" not in s)
        print(f"NetworkPolicy apply -> datapath {t_apply:.3f} s, delete {t_delete:.3f} s (after kubectl returned)")
        assert t_apply < 1.0 and t_delete < 1.0
        assert k.status()["network_policies"]["refused"] == {}
    finally:
        k.close()



TEAM_A = {"podSelector": {}, "policyTypes": ["Ingress"],
          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}]}


def test_namespace_labels_reach_the_datapath(k8s: ControlPlane, k8s_namespace: str) -> None:
    """The first set carries every namespace's labels; a relabel is pushed only while a policy has a
    namespaceSelector; an unrelated change of the namespace (an annotation) pushes nothing."""
    ns = k8s_namespace
    rec = Recorder()
    cfg = K8sConfig(node_name="netpol-test", kubeconfig=k8s.agent_kubeconfig, watch_pods=False)
    k = K8sIntegration(cfg, None, None, NetpolContext(rec))
    k.start()
    try:
        rec.wait(lambda s: True)
        assert rec.namespaces[-1][ns].get("kubernetes.io/metadata.name") == ns
        assert "kube-system" in rec.namespaces[-1]
        pushes = len(rec.sets)
        k8s.kubectl("label", "namespace", ns, "early=1")  # no policy selects namespaces yet: nothing pushed
        _wait(lambda: k.status()["network_policies"]["namespaces"] >= 1 and _seen_label(k, ns, "early"))
        assert len(rec.sets) == pushes
        k8s.kubectl("apply", "-f", "-", stdin=json.dumps(_policy("team-a", ns, TEAM_A)))
        rec.wait(lambda s: f"{ns}/team-a" in s)
        assert rec.namespaces[-1][ns].get("early") == "1"
        k8s.kubectl("label", "namespace", ns, "team=a")
        t0 = time.monotonic()
        with rec.changed:
            while rec.namespaces[-1].get(ns, {}).get("team") != "a":
                assert rec.changed.wait(max(0.0, 10 - (time.monotonic() - t0))), rec.namespaces[-1].get(ns)
        print(f"namespace relabel -> datapath {time.monotonic() - t0:.3f} s (after kubectl returned)")
        pushes = len(rec.sets)
        k8s.kubectl("annotate", "namespace", ns, "note=x")
        k8s.kubectl("label", "namespace", ns, "team=b", "--overwrite")
        rec.wait(lambda s: rec.namespaces[-1][ns].get("team") == "b")
        assert len(rec.sets) == pushes + 1  # the annotation pushed nothing, the relabel once
        assert k.status()["network_policies"]["relabels"] >= 2
    finally:
        k.close()
        k8s.kubectl("delete", "networkpolicy", "team-a", "-n", ns, "--ignore-not-found", check=False)


def _seen_label(k: K8sIntegration, ns: str, key: str) -> bool:
    return any(key in ((o.get("metadata") or {}).get("labels") or {})
               for r in k.reflectors if r.ctx.resource.name == "namespaces" for o in [r.get(ns) or {}])


def _wait(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_controller_pushes_only_complete_lists_and_label_changes() -> None:
    """No API: nothing reaches the datapath before both first lists; a deleted namespace and a relabel are
    pushed only while a policy has a namespaceSelector; a datapath error leaves the error in status."""
    from lanner.k8s.netpolicies import NetworkPolicyController
    from lanner.k8s.reflector import ADDED, DELETED, MODIFIED, SYNCED, Change

    rec = Recorder()
    c = NetworkPolicyController(NetpolContext(rec))

    def ns(kind: str, name: str, **labels: str) -> None:
        c.on_namespace(Change("namespaces", kind, {"metadata": {"name": name, "labels": labels}}))

    ns(ADDED, "a", team="a")
    c.on_change(Change("networkpolicies", ADDED, _policy("db", "a", DB)))
    c.on_change(Change("networkpolicies", SYNCED, {}))
    assert rec.sets == []  # the namespaces are not listed yet
    c.on_namespace(Change("namespaces", SYNCED, {}))
    assert rec.sets == [["a/db"]] and rec.namespaces[-1] == {"a": {"team": "a"}}
    ns(MODIFIED, "a", team="b")  # no policy selects namespaces: kept, not pushed
    ns(ADDED, "b")
    assert len(rec.sets) == 1 and c.status()["namespaces"] == 2
    c.on_change(Change("networkpolicies", ADDED, _policy("team", "a", TEAM_A)))
    assert rec.namespaces[-1] == {"a": {"team": "b"}, "b": {}}
    ns(MODIFIED, "a", team="b")  # the same labels
    assert len(rec.sets) == 2
    ns(DELETED, "b")
    assert len(rec.sets) == 3 and rec.namespaces[-1] == {"a": {"team": "b"}}
    c.on_namespace(Change("namespaces", SYNCED, {}))  # a re-list's end pushes nothing by itself
    assert len(rec.sets) == 3 and c.status()["relabels"] == 1

    def refuse(_policies, _namespaces) -> None:
        raise RuntimeError("policies need 300000 policy map entries at peak")

    c.ctx = NetpolContext(refuse)
    ns(MODIFIED, "a", team="c")
    assert c.status()["error"].startswith("policies need") and c.stats.applied == 3
