"""Identities and the ipcache as Kubernetes objects (the CRD identity backend), shared by every agent.

Objects (install/kubernetes/lanner-crds.yaml, group lanner.io, cluster-scoped):

    LannerIdentity  "<id>"          spec {identity, labels}   the number, reserved by creating it by name
    LannerIdentity  "l-<sha224>"    spec {identity, labels}   the label set's claim on one number
    LannerEndpoint  "<node>.<ip>-<prefix>"  spec {cidr, identity, node, pod}   one ipcache entry

Allocation is two creates by name, each refused with 409 when the name is taken: first the lowest number
not in use (taken: try the next), then the claim named by the label set's digest. A claim that already
exists wins: its number is the label set's, and the number just reserved is deleted again. So two agents
allocating the same labels at once agree (one claim can exist), and two label sets never share a number
(one object per number). Identities are permanent, as the etcd backend's are (``release`` keeps them).
Not yet here: a node's entries expiring when its agent dies (the etcd backend's leases), node
registration, watches; the agent does not offer ``--kvstore crd`` yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Mapping

from lanner.netdp.endpoint import FIRST_CLUSTER_IDENTITY
from lanner.netdp.identity import LAST_CLUSTER_IDENTITY, IdentityError

log = logging.getLogger("lanner.netdp.crd_store")

GROUP, VERSION = "lanner.io", "v1alpha1"
IDENTITIES, ENDPOINTS = "lanneridentities", "lannerendpoints"
KIND_LABEL = "lanner.io/kind"  # "id" or "claim"
ATTEMPTS = 64
TIMEOUT = (5, 15)


def claim_name(labels: Mapping[str, str]) -> str:
    canon = json.dumps(dict(sorted(labels.items())), separators=(",", ":"), sort_keys=True)
    return "l-" + hashlib.sha224(canon.encode()).hexdigest()


def endpoint_name(node: str, cidr: str) -> str:
    return f"{node}.{cidr.replace('/', '-')}".lower()


class CrdStore:
    """``lanner.netdp.identity.IdentityStore`` over the Kubernetes API (``api``: a kubernetes ApiClient)."""

    def __init__(self, api: Any, node_name: str) -> None:
        from kubernetes import client

        self.objects = client.CustomObjectsApi(api)
        self.node = node_name

    # ------------------------------------------------------------------ identities
    def allocate(self, labels: Mapping[str, str]) -> int:
        labels = dict(labels)
        claim = claim_name(labels)
        for _ in range(ATTEMPTS):
            existing = self._get(IDENTITIES, claim)
            if existing is not None:
                return int(existing["spec"]["identity"])
            number = self._reserve(labels)
            if self._create(IDENTITIES, claim, "claim", {"identity": number, "labels": labels}):
                return number
            self._delete(IDENTITIES, str(number))  # another agent claimed the label set meanwhile
        raise IdentityError(f"no identity for {labels} after {ATTEMPTS} attempts (the API server keeps refusing)")

    def _reserve(self, labels: dict[str, str]) -> int:
        """Create the lowest free "<id>" object; another agent taking it first (409) moves to the next."""
        taken = set(self._numbers())
        number = FIRST_CLUSTER_IDENTITY
        while number <= LAST_CLUSTER_IDENTITY:
            if number not in taken:
                if self._create(IDENTITIES, str(number), "id", {"identity": number, "labels": labels}):
                    return number
                taken.add(number)
            number += 1
        raise IdentityError(f"identities {FIRST_CLUSTER_IDENTITY}..{LAST_CLUSTER_IDENTITY} are all taken")

    def release(self, labels: Mapping[str, str]) -> None:
        """Identities are permanent (as with the etcd backend): other nodes' endpoints may still use it."""

    def labels_of(self, identity: int) -> dict[str, str] | None:
        obj = self._get(IDENTITIES, str(identity))
        return dict(obj["spec"].get("labels") or {}) if obj is not None else None

    def identities(self) -> dict[int, dict[str, str]]:
        """Every claimed identity and its labels (a number reserved but never claimed is not one)."""
        return {int(o["spec"]["identity"]): dict(o["spec"].get("labels") or {})
                for o in self._list(IDENTITIES, f"{KIND_LABEL}=claim")}

    def _numbers(self) -> list[int]:
        return [int(o["metadata"]["name"]) for o in self._list(IDENTITIES, f"{KIND_LABEL}=id")]

    # ------------------------------------------------------------------ ipcache
    def upsert_ip(self, cidr: str, identity: int, pod: Mapping[str, object] | None = None) -> None:
        name = endpoint_name(self.node, cidr)
        spec: dict[str, Any] = {"cidr": cidr, "identity": identity, "node": self.node}
        if pod is not None:
            spec["pod"] = dict(pod)
        if not self._create(ENDPOINTS, name, "endpoint", spec):  # ours already: replace it (RBAC: update)
            obj = self._get(ENDPOINTS, name)
            if obj is None:
                raise IdentityError(f"{ENDPOINTS}/{name}: deleted while being updated")
            obj["spec"] = spec
            self.objects.replace_cluster_custom_object(GROUP, VERSION, ENDPOINTS, name, obj, _request_timeout=TIMEOUT)

    def delete_ip(self, cidr: str) -> None:
        self._delete(ENDPOINTS, endpoint_name(self.node, cidr))

    def ipcache(self) -> dict[str, int]:
        return {o["spec"]["cidr"]: int(o["spec"]["identity"]) for o in self._list(ENDPOINTS, "")}

    # ------------------------------------------------------------------ the API
    def _create(self, plural: str, name: str, kind: str, spec: dict[str, Any]) -> bool:
        """Create by name; False when the name is taken (409)."""
        from kubernetes.client.exceptions import ApiException

        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LannerIdentity" if plural == IDENTITIES else
                "LannerEndpoint", "metadata": {"name": name, "labels": {KIND_LABEL: kind}}, "spec": spec}
        try:
            self.objects.create_cluster_custom_object(GROUP, VERSION, plural, body, _request_timeout=TIMEOUT)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise IdentityError(f"{plural}/{name}: HTTP {exc.status} {exc.reason}") from None

    def _get(self, plural: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.objects.get_cluster_custom_object(GROUP, VERSION, plural, name, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise IdentityError(f"{plural}/{name}: HTTP {exc.status} {exc.reason}") from None

    def _delete(self, plural: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.objects.delete_cluster_custom_object(GROUP, VERSION, plural, name, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise IdentityError(f"{plural}/{name}: HTTP {exc.status} {exc.reason}") from None

    def _list(self, plural: str, selector: str) -> list[dict]:
        out = self.objects.list_cluster_custom_object(GROUP, VERSION, plural, label_selector=selector,
                                                      _request_timeout=TIMEOUT)
        return list(out.get("items") or [])
