"""The Node's spec.podCIDR as IPAM's CIDR (lanner agent --enable-netdp --enable-k8s-api without --pod-cidr),
read with the agent's identity from the session's control plane. Nothing is started: the parsed flags go
through the CLI's own config step."""

from __future__ import annotations

import time
import uuid

import pytest

from lanner.k8s.client import K8sConfig
from lanner.k8s.nodes import PodCidrError, node_pod_cidr
from tests.k8s_harness import ControlPlane
from tests.k8s_kubelet import create_node


def test_the_nodes_pod_cidr_becomes_the_netdp_cidr(k8s: ControlPlane) -> None:
    from kubernetes import client

    from lanner.cli import _k8s_config, build_parser
    from lanner.netdp.cni.cli import netdp_config

    name = f"cidr-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(k8s.api_client())
    create_node(core, name, "10.244.42.0/24")
    try:
        args = build_parser().parse_args(["agent", "--enable-netdp", "--enable-k8s-api", "--k8s-kubeconfig-path",
                                          str(k8s.agent_kubeconfig), "--node-name", name])
        cfg = _k8s_config(args)
        assert cfg is not None and cfg.node_name == name
        assert netdp_config(args, required=False).pod_cidr == "10.244.42.0/24"
        given = build_parser().parse_args(["agent", "--enable-netdp", "--pod-cidr", "10.9.0.0/24", "--enable-k8s-api",
                                           "--k8s-kubeconfig-path", str(k8s.agent_kubeconfig), "--node-name", name])
        _k8s_config(given)
        assert given.pod_cidr == "10.9.0.0/24"  # the flag wins
    finally:
        core.delete_node(name)


def test_a_node_without_pod_cidr_is_an_error_naming_it(k8s: ControlPlane) -> None:
    name = f"nocidr-{uuid.uuid4().hex[:8]}"
    k8s.kubectl("create", "-f", "-", stdin=f"apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n")
    try:
        t0 = time.monotonic()
        with pytest.raises(PodCidrError, match=f"Node {name}: no IPv4 spec.podCIDR .*spec.podCIDR is not set"):
            node_pod_cidr(K8sConfig(node_name=name, kubeconfig=k8s.agent_kubeconfig), timeout_s=1.0, poll_s=0.2)
        assert time.monotonic() - t0 < 5
        with pytest.raises(PodCidrError, match="HTTP 404"):
            node_pod_cidr(K8sConfig(node_name=name + "-absent", kubeconfig=k8s.agent_kubeconfig), timeout_s=0.5,
                          poll_s=0.2)
    finally:
        k8s.kubectl("delete", "node", name, check=False)
