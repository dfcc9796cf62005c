"""NetworkPolicy parsing (errors name file and field) and compilation to policy-map entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from lanner.netdp.endpoint import IDENTITY_HOST, IDENTITY_WORLD
from lanner.netdp.netpolicy import (EGRESS, INGRESS, CidrIdentities, NetworkPolicyError, compile_endpoint,
                                    load_network_policies, port_blocks)

GOOD = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: tier, operator: NotIn, values: [legacy]}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
    - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [ops]}]}
    ports:
    - {port: 80}
    - {protocol: UDP, port: 5000, endPort: 5002}
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all}
spec:
  podSelector: {}
"""

IDS = {
    300: {"k8s:app": "client", "k8s:io.kubernetes.pod.namespace": "prod"},
    301: {"k8s:app": "client", "k8s:io.kubernetes.pod.namespace": "dev"},
    302: {"k8s:app": "mon", "k8s:io.kubernetes.pod.namespace": "ops"},
    303: {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "prod"},
}


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_parse_and_defaults(tmp_path: Path) -> None:
    pols = load_network_policies(write(tmp_path, "p.yaml", GOOD))
    web, deny = pols
    assert (web.namespace, web.name) == ("prod", "web")
    assert web.policy_types == {"Ingress", "Egress"}  # egress section present
    assert deny.namespace == "default" and deny.policy_types == {"Ingress"} and deny.ingress == ()
    assert web.selects("prod", {"app": "web"}) and not web.selects("prod", {"app": "web", "tier": "legacy"})
    assert not web.selects("dev", {"app": "web"})
    assert web.cidrs() == {"10.0.0.0/8", "10.1.0.0/16"}


def test_compile_entries(tmp_path: Path) -> None:
    web, deny = load_network_policies(write(tmp_path, "p.yaml", GOOD))
    cidrs = CidrIdentities({"10.0.0.0/8": (1 << 24) | 1, "10.1.0.0/16": (1 << 24) | 2, "10.2.0.0/16": (1 << 24) | 3})
    comp = compile_endpoint([web, deny], "prod", {"app": "web"}, IDS, cidrs)
    assert comp.ingress_enforced and comp.egress_enforced
    ing = {e for e in comp.entries if e[1] == INGRESS}
    # client in prod (same namespace) and every pod of namespace ops; TCP 80 and UDP 5000-5002
    # (the node, identity host, may always reach its pods)
    # 5000-5002 = the block 5000-5001 (prefix 15) and 5002 (prefix 16)
    assert ing == {(i, INGRESS, p, port, plen) for i in (300, 302) for p, port, plen in
                   ((6, 80, 16), (17, 5000, 15), (17, 5002, 16))} | {(IDENTITY_HOST, INGRESS, 0, 0, 0)}
    assert comp.origins[(300, INGRESS, 6, 80, 16)] == "prod/web"
    assert comp.origins[(IDENTITY_HOST, INGRESS, 0, 0, 0)] == "allow-localhost"
    egr = {e for e in comp.entries if e[1] == EGRESS}
    # the block and CIDRs inside it, minus the except; no port list = any protocol and port
    assert egr == {((1 << 24) | 1, EGRESS, 0, 0, 0), ((1 << 24) | 3, EGRESS, 0, 0, 0)}
    # an unselected pod in default is isolated by deny-all (ingress only, no entries)
    other = compile_endpoint([web, deny], "default", {"app": "x"}, IDS, cidrs)
    assert other.ingress_enforced and not other.egress_enforced
    assert other.entries == {(IDENTITY_HOST, INGRESS, 0, 0, 0)}
    strict = compile_endpoint([deny], "default", {"app": "x"}, IDS, cidrs, allow_host=False)
    assert strict.ingress_enforced and not strict.entries
    # nothing selects a pod in dev
    free = compile_endpoint([web, deny], "dev", {"app": "web"}, IDS, cidrs)
    assert not free.ingress_enforced and not free.egress_enforced


def test_empty_from_and_world(tmp_path: Path) -> None:
    text = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
"""
    (pol,) = load_network_policies(write(tmp_path, "o.yaml", text))
    comp = compile_endpoint([pol], "default", {}, IDS, CidrIdentities({"0.0.0.0/0": (1 << 24) | 9}))
    assert comp.egress_enforced and not comp.ingress_enforced
    assert comp.entries == {(0, EGRESS, 17, 53, 16), ((1 << 24) | 9, EGRESS, 0, 0, 0), (IDENTITY_WORLD, EGRESS, 0, 0, 0)}


TEAM = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-a, namespace: prod}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
"""


def test_namespace_labels_from_the_api(tmp_path: Path) -> None:
    """A namespaceSelector sees the namespace labels the caller gives (the API's), before those the identity
    carries; kubernetes.io/metadata.name stays the name; a namespace the caller does not list keeps its
    identity's labels."""
    (pol,) = load_network_policies(write(tmp_path, "t.yaml", TEAM))
    assert pol.selects_namespaces() and not load_network_policies(write(tmp_path, "g.yaml", GOOD))[1].selects_namespaces()
    ids = dict(IDS)
    ids[304] = {"k8s:io.kubernetes.pod.namespace": "legacy", "k8s:io.cilium.k8s.namespace.labels.team": "a"}
    none = CidrIdentities()

    def peers(namespaces):
        comp = compile_endpoint([pol], "prod", {}, ids, none, allow_host=False, namespaces=namespaces)
        assert comp.ingress_enforced
        return {e[0] for e in comp.entries}

    assert peers(None) == {304}  # only the identity that carries the label
    assert peers({"dev": {"team": "a"}}) == {301, 304}  # dev's pods now; legacy not listed: its own labels
    assert peers({"dev": {"team": "a"}, "legacy": {"team": "b"}}) == {301}  # the API's labels win
    assert peers({"dev": {"team": "b"}, "legacy": {}}) == set()
    # the name label cannot be taken away by the API's labels
    (by_name,) = load_network_policies(write(tmp_path, "n.yaml", TEAM.replace("team: a", "kubernetes.io/metadata.name: ops")))
    comp = compile_endpoint([by_name], "prod", {}, ids, none, allow_host=False, namespaces={"ops": {"x": "y"}})
    assert {e[0] for e in comp.entries} == {302}


def test_directory_load(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "README.txt", "not a policy")
    assert len(load_network_policies(tmp_path)) == 2
    write(tmp_path, "b.yml", GOOD.split("---")[0])
    with pytest.raises(NetworkPolicyError, match=r"b\.yml: document 1: metadata.name: prod/web is already defined in .*a\.yaml: document 1"):
        load_network_policies(tmp_path)


BAD = [
    ("spec:\n  podSelector: {}\n", r"document 3: apiVersion: None: expected networking.k8s.io/v1"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {}\nspec: {podSelector: {}}\n",
     r"document 3: metadata.name: required"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {}\n",
     r"\(default/x\): spec.podSelector: required"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n"
     "  ingress:\n  - ports: [{port: 80}, {port: 70000}]\n", r"spec.ingress\[0\].ports\[1\].port: 70000"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n"
     "  ingress:\n  - ports: [{port: http}]\n", r"spec.ingress\[0\].ports\[0\].port: named port 'http'"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n"
     "  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]\n",
     r"spec.egress\[0\].to\[0\].ipBlock.except\[0\]: 11.0.0.0/16 must be strictly inside"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n"
     "  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.1/8}}]\n", r"spec.egress\[0\].to\[0\].ipBlock.cidr: invalid CIDR"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n"
     "  podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}\n",
     r"spec.podSelector.matchExpressions\[0\].operator: 'Equals' is not one of"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n"
     "  ingress:\n  - from: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]\n",
     r"spec.ingress\[0\].from\[0\]: ipBlock cannot be combined"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n"
     "  policyTypes: [Ingress, Sideways]\n", r"spec.policyTypes\[1\]: 'Sideways'"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n"
     "  ingress:\n  - ports: [{protocol: ICMP}]\n", r"spec.ingress\[0\].ports\[0\].protocol: 'ICMP'"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n"
     "  ingres: []\n", r"spec.ingres: unknown field"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n"
     "  ingress:\n  - ports: [{port: 100, endPort: 99}]\n", r"spec.ingress\[0\].ports\[0\].endPort: 99 must be a number from"),
    ("key: [unclosed\n", r"invalid YAML"),
]


@pytest.mark.parametrize("text,pattern", BAD)
def test_errors_name_file_and_field(tmp_path: Path, text: str, pattern: str) -> None:
    # the bad document follows a good one: the whole file is rejected, naming the file
    p = write(tmp_path, "bad.yaml", GOOD + "---\n" + text if "unclosed" not in text else text)
    with pytest.raises(NetworkPolicyError) as ei:
        load_network_policies(p)
    msg = str(ei.value)
    assert msg.startswith(str(p)), msg
    import re
    assert re.search(pattern, msg), msg


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(NetworkPolicyError, match="nope.yaml: no such file"):
        load_network_policies(tmp_path / "nope.yaml")


@pytest.mark.parametrize("lo,hi", [(1, 1), (1, 65535), (1024, 65535), (5000, 5002), (80, 443), (32768, 65535),
                                   (65535, 65535), (3, 17)])
def test_port_blocks_cover_the_range_exactly(lo: int, hi: int) -> None:
    blocks = port_blocks(lo, hi)
    covered = []
    for first, plen in blocks:
        size = 1 << (16 - plen)
        assert first % size == 0 and 1 <= plen <= 16  # aligned, never the every-port block
        covered += range(first, first + size)
    assert covered == list(range(lo, hi + 1))
    assert len(blocks) <= 30
