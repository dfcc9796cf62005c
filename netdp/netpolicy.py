"""Kubernetes ``networking.k8s.io/v1`` NetworkPolicy: parse, validate, and compile to map entries.

``load_network_policies(path)`` reads multi-document YAML (a file, or every ``*.yaml``/``*.yml``/``*.json``
in a directory). Errors name the file, the document and the field path
(``p.yaml: document 2 (default/web): spec.ingress[0].ports[1].port: ...``); a file with any error is
rejected whole.

``compile_endpoint`` turns the policies into the entries of one endpoint's policy map: a set of
``(remote identity, direction, protocol, port, prefix length)`` where identity 0 means any peer,
protocol 0 any protocol, and ports are aligned blocks (prefix length 16 = one port, 0 = every port;
an endPort range becomes a few blocks), plus whether each direction is enforced (some policy selects the
endpoint for it). Peers are resolved to identities from their labels (see ``netdp.identity``);
ipBlocks to CIDR identities (``CidrIdentities``). A ``namespaceSelector`` sees a namespace's labels as
the API has them when the caller passes them (``namespaces``, from the agent's Namespace watch), else
those the identity carries; ``kubernetes.io/metadata.name`` is always the namespace's name.

Semantics (the Kubernetes spec): a pod is isolated for a direction once any policy selecting it has
that policy type; the allowed traffic is then the union of all rules. ``ingress: []`` (or an Ingress
policy type without rules) allows nothing; a rule without ``from``/``to`` allows every peer; a rule
without ``ports`` allows every port and protocol. ``policyTypes`` defaults to Ingress, plus Egress when
the policy has an ``egress`` section. The node (identity host) may always reach its pods. ipBlocks match addresses outside the cluster's pods (as Cilium:
a pod IP carries the pod's identity, not a CIDR identity); ``0.0.0.0/0`` also matches the world
identity (ipcache miss).
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .endpoint import IDENTITY_HOST, IDENTITY_WORLD
from .identity import LABEL_SOURCE, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX

INGRESS, EGRESS = 0, 1  # direction numbers, as in netdp/bpf/datapath.h
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
NS_NAME_LABEL = "kubernetes.io/metadata.name"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class NetworkPolicyError(ValueError):
    """A policy file or document is invalid; the message names file, document and field path."""


# --------------------------------------------------------------------------------------------------
# model


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """An empty selector matches everything."""
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    except_: tuple[str, ...] = ()


@dataclass(frozen=True)
class Peer:
    """One from/to entry. Exactly ipBlock, or pod and/or namespace selectors."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    protocol: int  # IP protocol number
    port: int = 0  # 0: every port
    end_port: int = 0  # 0: a single port

    def blocks(self) -> list[tuple[int, int]]:
        """The ports as aligned blocks ``(first port, prefix length)``: (0, 0) = every port."""
        if not self.port:
            return [(0, 0)]
        return port_blocks(self.port, self.end_port or self.port)


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi] as the fewest aligned power-of-two blocks (at most 30 for any range)."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 17 - size.bit_length()))
        lo += size
    return out


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...] = ()  # empty: every peer
    ports: tuple[PolicyPort, ...] = ()  # empty: every port and protocol


@dataclass(frozen=True)
class NetworkPolicy:
    name: str
    namespace: str
    pod_selector: LabelSelector
    policy_types: frozenset[str]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    source: str = ""  # file the policy came from

    def selects(self, namespace: str, pod_labels: Mapping[str, str]) -> bool:
        return namespace == self.namespace and self.pod_selector.matches(pod_labels)

    def cidrs(self) -> set[str]:
        """Every CIDR its ipBlocks name (blocks and excepts)."""
        out: set[str] = set()
        for rule in self.ingress + self.egress:
            for peer in rule.peers:
                if peer.ip_block:
                    out.add(peer.ip_block.cidr)
                    out.update(peer.ip_block.except_)
        return out

    def selects_namespaces(self) -> bool:
        """Whether a peer has a namespaceSelector (its entries depend on namespace labels)."""
        return any(peer.namespace_selector is not None for rule in self.ingress + self.egress for peer in rule.peers)


# --------------------------------------------------------------------------------------------------
# parsing


class _Ctx:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, msg: str) -> NetworkPolicyError:
        return NetworkPolicyError(f"{self.where}: {path}: {msg}" if path else f"{self.where}: {msg}")


def _mapping(ctx: _Ctx, v: Any, path: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ctx.fail(path, f"expected a mapping, got {type(v).__name__}")
    return v


def _list(ctx: _Ctx, v: Any, path: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ctx.fail(path, f"expected a list, got {type(v).__name__}")
    return v


def _known(ctx: _Ctx, m: dict[str, Any], allowed: Iterable[str], path: str) -> None:
    extra = sorted(set(m) - set(allowed))
    if extra:
        raise ctx.fail(f"{path}.{extra[0]}" if path else extra[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _str(ctx: _Ctx, v: Any, path: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ctx.fail(path, f"expected a string, got {type(v).__name__}")
    return str(v)


def _selector(ctx: _Ctx, v: Any, path: str) -> LabelSelector:
    m = _mapping(ctx, v, path)
    _known(ctx, m, ("matchLabels", "matchExpressions"), path)
    labels = _mapping(ctx, m.get("matchLabels"), f"{path}.matchLabels")
    ml = tuple(sorted((_str(ctx, k, f"{path}.matchLabels"), _str(ctx, val, f"{path}.matchLabels.{k}"))
                      for k, val in labels.items()))
    reqs = []
    for i, e in enumerate(_list(ctx, m.get("matchExpressions"), f"{path}.matchExpressions")):
        p = f"{path}.matchExpressions[{i}]"
        e = _mapping(ctx, e, p)
        _known(ctx, e, ("key", "operator", "values"), p)
        if "key" not in e:
            raise ctx.fail(f"{p}.key", "required")
        op = e.get("operator")
        if op not in OPERATORS:
            raise ctx.fail(f"{p}.operator", f"{op!r} is not one of {', '.join(OPERATORS)}")
        values = tuple(_str(ctx, x, f"{p}.values[{j}]") for j, x in enumerate(_list(ctx, e.get("values"), f"{p}.values")))
        if op in ("In", "NotIn") and not values:
            raise ctx.fail(f"{p}.values", f"must be non-empty for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise ctx.fail(f"{p}.values", f"must be empty for operator {op}")
        reqs.append(Requirement(_str(ctx, e["key"], f"{p}.key"), op, values))
    return LabelSelector(ml, tuple(reqs))


def _cidr(ctx: _Ctx, v: Any, path: str) -> ipaddress.IPv4Network:
    s = _str(ctx, v, path)
    try:
        net = ipaddress.ip_network(s, strict=True)
    except ValueError as e:
        raise ctx.fail(path, f"invalid CIDR {s!r}: {e}") from None
    if net.version != 4:
        raise ctx.fail(path, f"{s!r}: only IPv4 is supported")
    return net  # type: ignore[return-value]


def _peer(ctx: _Ctx, v: Any, path: str) -> Peer:
    m = _mapping(ctx, v, path)
    _known(ctx, m, ("podSelector", "namespaceSelector", "ipBlock"), path)
    if not m:
        raise ctx.fail(path, "a peer needs podSelector, namespaceSelector or ipBlock")
    if "ipBlock" in m:
        if len(m) > 1:
            raise ctx.fail(path, "ipBlock cannot be combined with podSelector or namespaceSelector")
        p = f"{path}.ipBlock"
        b = _mapping(ctx, m["ipBlock"], p)
        _known(ctx, b, ("cidr", "except"), p)
        if "cidr" not in b:
            raise ctx.fail(f"{p}.cidr", "required")
        net = _cidr(ctx, b["cidr"], f"{p}.cidr")
        excepts = []
        for i, x in enumerate(_list(ctx, b.get("except"), f"{p}.except")):
            ex = _cidr(ctx, x, f"{p}.except[{i}]")
            if not ex.subnet_of(net) or ex == net:
                raise ctx.fail(f"{p}.except[{i}]", f"{ex} must be strictly inside {net}")
            excepts.append(str(ex))
        return Peer(ip_block=IPBlock(str(net), tuple(excepts)))
    pod = _selector(ctx, m["podSelector"], f"{path}.podSelector") if "podSelector" in m else None
    ns = _selector(ctx, m["namespaceSelector"], f"{path}.namespaceSelector") if "namespaceSelector" in m else None
    return Peer(pod_selector=pod, namespace_selector=ns)


def _port(ctx: _Ctx, v: Any, path: str) -> PolicyPort:
    m = _mapping(ctx, v, path)
    _known(ctx, m, ("protocol", "port", "endPort"), path)
    proto_name = m.get("protocol", "TCP")
    if proto_name not in PROTOCOLS:
        raise ctx.fail(f"{path}.protocol", f"{proto_name!r} is not one of TCP, UDP, SCTP")
    port = m.get("port")
    if port is None:
        if "endPort" in m:
            raise ctx.fail(f"{path}.endPort", "requires port")
        return PolicyPort(PROTOCOLS[proto_name])
    if isinstance(port, str) and not port.isdigit():
        raise ctx.fail(f"{path}.port", f"named port {port!r} is not supported (use a number)")
    if isinstance(port, bool) or not isinstance(port, (int, str)) or not 1 <= int(port) <= 65535:
        raise ctx.fail(f"{path}.port", f"{port!r} is not a port number 1-65535")
    end = m.get("endPort")
    if end is not None:
        if isinstance(end, bool) or not isinstance(end, int) or not int(port) <= end <= 65535:
            raise ctx.fail(f"{path}.endPort", f"{end!r} must be a number from port ({port}) to 65535")
    return PolicyPort(PROTOCOLS[proto_name], int(port), int(end or 0))


def _rules(ctx: _Ctx, v: Any, path: str, peer_key: str) -> tuple[Rule, ...]:
    out = []
    for i, r in enumerate(_list(ctx, v, path)):
        p = f"{path}[{i}]"
        m = _mapping(ctx, r, p)
        _known(ctx, m, (peer_key, "ports"), p)
        peers = tuple(_peer(ctx, x, f"{p}.{peer_key}[{j}]") for j, x in enumerate(_list(ctx, m.get(peer_key), f"{p}.{peer_key}")))
        ports = tuple(_port(ctx, x, f"{p}.ports[{j}]") for j, x in enumerate(_list(ctx, m.get("ports"), f"{p}.ports")))
        out.append(Rule(peers, ports))
    return tuple(out)


def parse_network_policy(doc: Any, where: str) -> NetworkPolicy:
    """One decoded YAML document. ``where`` prefixes every error message."""
    ctx = _Ctx(where)
    m = _mapping(ctx, doc, "")
    if m.get("apiVersion") != "networking.k8s.io/v1":
        raise ctx.fail("apiVersion", f"{m.get('apiVersion')!r}: expected networking.k8s.io/v1")
    if m.get("kind") != "NetworkPolicy":
        raise ctx.fail("kind", f"{m.get('kind')!r}: expected NetworkPolicy")
    _known(ctx, m, ("apiVersion", "kind", "metadata", "spec", "status"), "")
    meta = _mapping(ctx, m.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.fail("metadata.name", "required (a non-empty string)")
    namespace = meta.get("namespace", "default")
    if not isinstance(namespace, str) or not namespace:
        raise ctx.fail("metadata.namespace", "must be a non-empty string")
    ctx = _Ctx(f"{where} ({namespace}/{name})")
    if "spec" not in m:
        raise ctx.fail("spec", "required")
    spec = _mapping(ctx, m["spec"], "spec")
    _known(ctx, spec, ("podSelector", "policyTypes", "ingress", "egress"), "spec")
    if "podSelector" not in spec:
        raise ctx.fail("spec.podSelector", "required (use {} to select every pod of the namespace)")
    selector = _selector(ctx, spec["podSelector"], "spec.podSelector")
    types_raw = spec.get("policyTypes")
    if types_raw is None:
        types = {"Ingress"} | ({"Egress"} if "egress" in spec else set())
    else:
        types = set()
        for i, t in enumerate(_list(ctx, types_raw, "spec.policyTypes")):
            if t not in ("Ingress", "Egress"):
                raise ctx.fail(f"spec.policyTypes[{i}]", f"{t!r} is not Ingress or Egress")
            types.add(t)
    ingress = _rules(ctx, spec.get("ingress"), "spec.ingress", "from")
    egress = _rules(ctx, spec.get("egress"), "spec.egress", "to")
    return NetworkPolicy(name, namespace, selector, frozenset(types), ingress, egress, where)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))
    if path.is_file():
        return [path]
    raise NetworkPolicyError(f"{path}: no such file or directory")


def load_network_policy_file(path: Path) -> list[NetworkPolicy]:
    try:
        text = path.read_text()
    except OSError as e:
        raise NetworkPolicyError(f"{path}: cannot read: {e.strerror}") from None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise NetworkPolicyError(f"{path}: invalid YAML: {e}") from None
    out: list[NetworkPolicy] = []
    for i, doc in enumerate(docs, 1):
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            out += [parse_network_policy(d, f"{path}: document {i} item {j}") for j, d in enumerate(doc["items"])]
            continue
        out.append(parse_network_policy(doc, f"{path}: document {i}"))
    return out


def load_network_policies(path: Path) -> list[NetworkPolicy]:
    """Every NetworkPolicy in a file or a directory. Any error rejects the whole load."""
    out: list[NetworkPolicy] = []
    seen: dict[tuple[str, str], str] = {}
    for f in _files(Path(path)):
        for pol in load_network_policy_file(f):
            key = (pol.namespace, pol.name)
            if key in seen:
                raise NetworkPolicyError(f"{pol.source}: metadata.name: {pol.namespace}/{pol.name} is already defined in {seen[key]}")
            seen[key] = pol.source
            out.append(pol)
    return out


# --------------------------------------------------------------------------------------------------
# compilation


@dataclass(frozen=True)
class SubjectLabels:
    """What selectors see of an identity: pod namespace, pod labels, namespace labels."""

    namespace: str | None
    pod_labels: dict[str, str]
    namespace_labels: dict[str, str]

    @classmethod
    def from_identity_labels(cls, labels: Mapping[str, str],
                             namespaces: Mapping[str, Mapping[str, str]] | None = None) -> "SubjectLabels":
        """``namespaces``: namespace name -> its labels as the API has them now. A namespace listed there
        has exactly those labels (those the identity carries are left aside); otherwise the identity's
        ``io.cilium.k8s.namespace.labels.*``. Either way ``kubernetes.io/metadata.name`` is the name."""
        ns = labels.get(NAMESPACE_LABEL)
        pod: dict[str, str] = {}
        nsl: dict[str, str] = {}
        for k, v in labels.items():
            if k == NAMESPACE_LABEL:
                continue
            if k.startswith(NAMESPACE_LABELS_PREFIX):
                nsl[k[len(NAMESPACE_LABELS_PREFIX):]] = v
            elif k.startswith(LABEL_SOURCE):
                pod[k[len(LABEL_SOURCE):]] = v
        if ns is not None and namespaces is not None and ns in namespaces:
            nsl = dict(namespaces[ns])
        if ns is not None:
            nsl.setdefault(NS_NAME_LABEL, ns)
        return cls(ns, pod, nsl)


def cidr_range(cidr: str) -> tuple[int, int, int]:
    """A normalized IPv4 ``a.b.c.d/n`` -> (first address, last address, prefix length) as integers."""
    addr, _, plen = cidr.partition("/")
    n = int(plen) if plen else 32
    first = int.from_bytes(socket.inet_aton(addr), "big")
    return first, first | ((1 << (32 - n)) - 1), n


@dataclass
class CidrIdentities:
    """Node-local identities of the CIDRs policies name (the ipBlocks and their excepts)."""

    by_cidr: dict[str, int] = field(default_factory=dict)
    _sorted: list[tuple[int, int, int]] | None = field(default=None, init=False, repr=False)  # (first, last, id)
    _starts: list[int] = field(default_factory=list, init=False, repr=False)

    def _index(self) -> list[tuple[int, int, int]]:
        if self._sorted is None:
            rows = []
            for cidr, ident in self.by_cidr.items():
                first, last, _ = cidr_range(cidr)
                rows.append((first, last, ident))
            rows.sort()
            self._sorted = rows
            self._starts = [r[0] for r in rows]
        return self._sorted

    def allowed(self, block: IPBlock) -> set[int]:
        """Identities an ipBlock allows: every known CIDR inside the block and not inside an except."""
        rows = self._index()
        first, last, prefixlen = cidr_range(block.cidr)
        excepts = [cidr_range(e)[:2] for e in block.except_]
        out = set()
        for i in range(bisect.bisect_left(self._starts, first), bisect.bisect_right(self._starts, last)):
            lo, hi, ident = rows[i]
            if hi <= last and not any(elo <= lo and hi <= ehi for elo, ehi in excepts):
                out.add(ident)
        if prefixlen == 0:
            out.add(IDENTITY_WORLD)  # an ipcache miss is the world
        return out


# (remote identity or 0, direction, protocol or 0, first port of the block, block prefix length 0-16)
PolicyEntry = tuple[int, int, int, int, int]
ALLOW_LOCALHOST = "allow-localhost"  # the origin of the entry that lets the node reach its pods


@dataclass(frozen=True)
class EndpointPolicy:
    ingress_enforced: bool
    egress_enforced: bool
    entries: frozenset[PolicyEntry]
    origins: Mapping[PolicyEntry, str] = field(default_factory=dict)  # entry -> "ns/name" (first)


def _peer_identities(peer: Peer, policy_ns: str, subjects: Mapping[int, SubjectLabels],
                     cidrs: CidrIdentities) -> set[int]:
    if peer.ip_block is not None:
        return cidrs.allowed(peer.ip_block)
    out = set()
    for ident, s in subjects.items():
        if s.namespace is None:
            continue
        if peer.namespace_selector is None:
            if s.namespace != policy_ns:
                continue
        elif not peer.namespace_selector.matches(s.namespace_labels):
            continue
        if peer.pod_selector is not None and not peer.pod_selector.matches(s.pod_labels):
            continue
        out.add(ident)
    return out


def _rule_entries(rule: Rule, direction: int, policy_ns: str, subjects: Mapping[int, SubjectLabels],
                  cidrs: CidrIdentities) -> set[PolicyEntry]:
    if rule.peers:
        idents: set[int] = set()
        for peer in rule.peers:
            idents |= _peer_identities(peer, policy_ns, subjects, cidrs)
    else:
        idents = {0}
    l4 = [(p.protocol, port, plen) for p in rule.ports for port, plen in p.blocks()] if rule.ports else [(0, 0, 0)]
    return {(ident, direction, proto, port, plen) for ident in idents for proto, port, plen in l4}


def subjects_of(identities: Mapping[int, Mapping[str, str]],
                namespaces: Mapping[str, Mapping[str, str]] | None = None) -> dict[int, SubjectLabels]:
    """What selectors see of every identity (``namespaces``: see SubjectLabels.from_identity_labels)."""
    return {i: SubjectLabels.from_identity_labels(lbl, namespaces) for i, lbl in identities.items()}


def compile_endpoint(policies: Iterable[NetworkPolicy], namespace: str, pod_labels: Mapping[str, str],
                     identities: Mapping[int, Mapping[str, str]] | Mapping[int, SubjectLabels],
                     cidrs: CidrIdentities, allow_host: bool = True,
                     namespaces: Mapping[str, Mapping[str, str]] | None = None) -> EndpointPolicy:
    """The policy map entries of one endpoint, given every known identity's labels (or their
    ``subjects_of``, computed once for many endpoints). ``namespaces``: namespace labels from the API.

    ``allow_host``: the node itself (identity host) may always reach its pods, as Cilium's
    allow-localhost default does (kubelet probes)."""
    subjects = {i: s if isinstance(s, SubjectLabels) else SubjectLabels.from_identity_labels(s, namespaces)
                for i, s in identities.items()}
    ing = egr = False
    origins: dict[PolicyEntry, str] = {}
    for pol in policies:
        if not pol.selects(namespace, pod_labels):
            continue
        name = f"{pol.namespace}/{pol.name}"
        if "Ingress" in pol.policy_types:
            ing = True
            for rule in pol.ingress:
                for e in _rule_entries(rule, INGRESS, pol.namespace, subjects, cidrs):
                    origins.setdefault(e, name)
        if "Egress" in pol.policy_types:
            egr = True
            for rule in pol.egress:
                for e in _rule_entries(rule, EGRESS, pol.namespace, subjects, cidrs):
                    origins.setdefault(e, name)
    if ing and allow_host:
        origins.setdefault((IDENTITY_HOST, INGRESS, 0, 0, 0), ALLOW_LOCALHOST)
    return EndpointPolicy(ing, egr, frozenset(origins), origins)
