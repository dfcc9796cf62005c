"""The Kubernetes API client: from a kubeconfig file, or in-cluster (the pod's service account) without one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class K8sConfig:
    """``--enable-k8s-api`` and friends."""

    node_name: str
    kubeconfig: Path | None = None  # --k8s-kubeconfig-path; None: in-cluster config
    watch_policies: bool = True  # TracingPolicy / TracingPolicyNamespaced
    watch_pods: bool = True  # this node's pods: event enrichment and policy scoping
    event_interval_s: float = 60.0  # one Event per policy, node and reason at most this often
    crd_poll_s: float = 2.0  # how often a resource whose CRD is missing is looked for again


def make_api_client(cfg: K8sConfig) -> Any:
    """A ``kubernetes.client.ApiClient``; raises ``kubernetes.config.ConfigException`` (or OSError) naming
    what is missing when neither the kubeconfig nor the in-cluster environment can be read."""
    from kubernetes import client, config

    if cfg.kubeconfig is not None:
        return config.new_client_from_config(config_file=str(cfg.kubeconfig))
    conf = client.Configuration()
    config.load_incluster_config(client_configuration=conf)
    return client.ApiClient(conf)


def describe_server(api: Any) -> str:
    return str(getattr(api.configuration, "host", "?"))
