"""This node's pod CIDR from its Node object (``spec.podCIDR``), for IPAM when --pod-cidr is not given.

The one place the agent waits for the API at start: without a CIDR the node cannot serve CNI, so
``lanner agent --enable-netdp --enable-k8s-api`` without ``--pod-cidr`` reads it first (as Cilium's
Kubernetes IPAM mode does), polling until the Node has one or ``timeout_s`` passes; the error names the
Node and the field.
"""

from __future__ import annotations

import time

from .client import K8sConfig, make_api_client


class PodCidrError(RuntimeError):
    pass


def node_pod_cidr(cfg: K8sConfig, timeout_s: float = 30.0, poll_s: float = 1.0) -> str:
    """``spec.podCIDR`` of Node ``cfg.node_name`` (the first of ``spec.podCIDRs`` that is IPv4)."""
    from kubernetes import client

    api = make_api_client(cfg)
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout_s
    last = "not read yet"
    try:
        while True:
            try:
                spec = core.read_node(cfg.node_name, _request_timeout=(5, 10)).spec
                cidrs = [c for c in ([spec.pod_cidr] if spec.pod_cidr else []) + list(spec.pod_cidrs or [])
                         if ":" not in c]
                if cidrs:
                    return cidrs[0]
                last = "spec.podCIDR is not set"
            except client.exceptions.ApiException as exc:
                last = f"HTTP {exc.status} {exc.reason}"
            except OSError as exc:  # urllib3's connection errors are OSErrors
                last = str(exc).splitlines()[0]
            if time.monotonic() + poll_s > deadline:
                raise PodCidrError(f"Node {cfg.node_name}: no IPv4 spec.podCIDR after {timeout_s:.0f} s ({last}); "
                                   "give --pod-cidr, or set the Node's podCIDR (kube-controller-manager "
                                   "--allocate-node-cidrs)")
            time.sleep(poll_s)
    finally:
        api.close()
