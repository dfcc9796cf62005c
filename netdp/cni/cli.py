"""The networking part of the ``lanner`` command line: the agent's netdp flags and ``lanner cni``.

Imported by lanner/cli.py; only argparse/pathlib at import time (the runtime is imported when used).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from lanner.netdp.cni.protocol import DEFAULT_SOCKET

DEFAULT_STATE_DIR = "/var/lib/lanner/netdp"
DEFAULT_PIN_DIR = "/sys/fs/bpf/lanner/netdp"

CNI_EPILOG = """\
how it fits together:
  The runtime (containerd, CRI-O, a libcni tool) reads <conf-dir>/10-lanner.conflist and execs
  <bin-dir>/lanner-cni for every pod. lanner-cni is a thin client, compiled from C ('make cni'): it
  forwards the request to the agent's CNI socket, and the agent (started with --enable-netdp, or 'lanner cni serve') allocates
  the pod's address from --pod-cidr, creates its veth, and attaches the eBPF datapath.

examples:
  lanner cni install --conf-dir /etc/cni/net.d --bin-dir /opt/cni/bin
  lanner agent --enable-netdp --pod-cidr 10.200.0.0/24
  lanner cni serve --pod-cidr 10.200.0.0/24 --no-netdp-datapath     CNI only: no sensors, no BPF
"""


def add_netdp_flags(g: argparse._ArgumentGroup, with_enable: bool) -> None:
    """The runtime's flags, shared by ``lanner agent`` and ``lanner cni serve``."""
    if with_enable:
        g.add_argument("--enable-netdp", action="store_true",
                       help="also be this node's CNI: serve lanner-cni on --cni-socket, allocate pod IPs from "
                            "--pod-cidr, attach the eBPF datapath and export flow events (off: the agent is "
                            "a security agent only)")
    g.add_argument("--pod-cidr", metavar="CIDR", default=None,
                   help="this node's pod network, e.g. 10.200.0.0/24; the first host address is the pods' "
                        "gateway (put on the lanner_host device in the agent's netns)")
    g.add_argument("--cni-socket", type=Path, default=Path(DEFAULT_SOCKET), metavar="PATH",
                   help="unix socket lanner-cni talks to (must match 'agentSocket' in the conflist)")
    g.add_argument("--netdp-state-dir", type=Path, default=Path(DEFAULT_STATE_DIR), metavar="DIR",
                   help="IPAM leases and the identity store, crash-safe")
    g.add_argument("--network-policy-dir", type=Path, default=None, metavar="DIR",
                   help="Kubernetes NetworkPolicy YAML files enforced by the datapath")
    g.add_argument("--netdp-mtu", type=int, default=1500, metavar="N",
                   help="pod interface MTU when the conflist has no 'mtu'")
    g.add_argument("--netdp-datapath", action=argparse.BooleanOptionalAction, default=True,
                   help="load the eBPF datapath (TC programs, policy, flows); --no-netdp-datapath gives plain "
                        "routed veths")
    g.add_argument("--netdp-host-routing", action=argparse.BooleanOptionalAction, default=True,
                   help="hand pod-to-pod packets on this node straight to the destination pod from the source "
                        "pod's program (bpf_redirect_peer), skipping the node's IP stack; "
                        "--no-netdp-host-routing routes them through the stack (needed when a qdisc on the host "
                        "veth, e.g. the bandwidth plugin's, must shape traffic from local pods)")
    g.add_argument("--cri-socket", type=Path, default=None, metavar="PATH",
                   help="the container runtime's CRI socket (e.g. /run/containerd/containerd.sock): pod labels for "
                        "identities and containers for pod enrichment; without it identities use the namespace only")
    g.add_argument("--kvstore", choices=["local", "etcd", "crd"], default="local",
                   help="where identities and the ipcache live: 'local' (a file in --netdp-state-dir, one node); "
                        "for a cluster, where every node agrees on identities, sees the others' pods and routes to "
                        "their pod CIDRs (needs --node-ip): 'etcd' (an etcd cluster: --etcd-endpoint) or 'crd' "
                        "(the Kubernetes API: LannerIdentity/LannerEndpoint/LannerNode objects of "
                        "install/kubernetes/lanner-crds.yaml, reached with --k8s-kubeconfig-path or in-cluster)")
    g.add_argument("--etcd-endpoint", metavar="URL", default=None,
                   help="an etcd v3 member's client URL, e.g. http://10.0.0.1:2379 (with --kvstore etcd)")
    g.add_argument("--node-ip", metavar="IP", default=None,
                   help="this node's address on the network between nodes (with --kvstore etcd|crd)")
    g.add_argument("--underlay-device", metavar="DEV", default="eth0",
                   help="the device carrying node-to-node traffic (with --kvstore etcd|crd)")
    g.add_argument("--routing-mode", choices=["native", "vxlan"], default="native",
                   help="how pod traffic reaches other nodes: 'native' routes (nodes share an L2 segment) or a "
                        "'vxlan' overlay (UDP 8472; pod MTU = underlay MTU - 50)")
    g.add_argument("--kvstore-lease-ttl", type=int, default=10, metavar="SECONDS",
                   help="after a crash this node's pods and routes vanish from the other nodes within this time: "
                        "the TTL of its etcd lease, or (crd) of its LannerNode, renewed every TTL/3; the other "
                        "agents time the silence on their own clock and delete its objects")
    g.add_argument("--cluster-node-name", metavar="NAME", default=None,
                   help="this node's name in the cluster (default: --node-name, else the hostname)")
    g.add_argument("--netdp-pin-dir", type=Path, default=Path(DEFAULT_PIN_DIR), metavar="DIR",
                   help="where the datapath pins its maps")


def netdp_config(args: argparse.Namespace, required: bool):
    """NetdpConfig from the flags, or None when netdp is off. ValueError names the bad flag."""
    import os

    if not required and not getattr(args, "enable_netdp", False):
        return None
    if not args.pod_cidr:
        raise ValueError("--pod-cidr is required with " + ("--enable-netdp" if not required else "'cni serve'"))
    try:
        net = ipaddress.ip_network(args.pod_cidr, strict=True)
    except ValueError as exc:
        raise ValueError(f"--pod-cidr {args.pod_cidr!r}: {exc}") from None
    if net.version != 4 or net.prefixlen > 30:
        raise ValueError(f"--pod-cidr {args.pod_cidr!r}: must be IPv4 with a prefix of /30 or shorter")
    if not 68 <= args.netdp_mtu <= 65535:
        raise ValueError(f"--netdp-mtu {args.netdp_mtu}: must be in 68..65535")
    if args.network_policy_dir is not None and not args.network_policy_dir.exists():
        raise ValueError(f"--network-policy-dir {args.network_policy_dir}: does not exist")
    from lanner.netdp.runtime import CRASH_ENV, NetdpConfig

    cluster = _cluster_config(args, str(net))
    return NetdpConfig(cluster=cluster, pod_cidr=str(net), state_dir=args.netdp_state_dir, cni_socket=args.cni_socket,
                       network_policy_dir=args.network_policy_dir, datapath=args.netdp_datapath,
                       pin_dir=args.netdp_pin_dir, mtu=args.netdp_mtu, crash_at=os.environ.get(CRASH_ENV, ""),
                       node_name=getattr(args, "node_name", "") or "", cri_socket=args.cri_socket,
                       host_routing=args.netdp_host_routing)


def _cluster_config(args: argparse.Namespace, pod_cidr: str):
    """ClusterConfig for --kvstore etcd|crd (None for local). ValueError names the bad flag."""
    if args.kvstore == "local":
        for flag, value, needs in (("--etcd-endpoint", args.etcd_endpoint, "--kvstore etcd"),
                                   ("--node-ip", args.node_ip, "--kvstore etcd or crd")):
            if value:
                raise ValueError(f"{flag} needs {needs}")
        return None
    if args.kvstore == "etcd" and not args.etcd_endpoint:
        raise ValueError("--kvstore etcd needs --etcd-endpoint (e.g. http://10.0.0.1:2379)")
    if args.kvstore == "crd" and args.etcd_endpoint:
        raise ValueError("--etcd-endpoint is for --kvstore etcd; --kvstore crd reaches the Kubernetes API "
                         "(--k8s-kubeconfig-path, or in-cluster)")
    if not args.node_ip:
        raise ValueError(f"--kvstore {args.kvstore} needs --node-ip (this node's address between nodes)")
    try:
        ipaddress.IPv4Address(args.node_ip)
    except ValueError:
        raise ValueError(f"--node-ip {args.node_ip!r}: not an IPv4 address") from None
    if args.kvstore_lease_ttl < 2:
        raise ValueError(f"--kvstore-lease-ttl {args.kvstore_lease_ttl}: must be at least 2 seconds")
    import socket

    from lanner.netdp.cluster import ClusterConfig

    name = args.cluster_node_name or getattr(args, "node_name", "") or socket.gethostname()
    kubeconfig = getattr(args, "k8s_kubeconfig_path", None)
    if args.kvstore == "crd":
        _check_crd_flags(name, kubeconfig)
    return ClusterConfig(etcd_endpoint=args.etcd_endpoint or "", node_name=name, node_ip=args.node_ip,
                         pod_cidr=pod_cidr, underlay_device=args.underlay_device, routing=args.routing_mode,
                         lease_ttl_s=args.kvstore_lease_ttl, kvstore=args.kvstore,
                         kubeconfig=kubeconfig if args.kvstore == "crd" else None)


def _check_crd_flags(name: str, kubeconfig: Path | None) -> None:
    """The node name becomes a LannerNode's name: a DNS subdomain. The kubeconfig must exist."""
    import re

    if len(name) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name):
        raise ValueError(f"--kvstore crd: node name {name!r} (--cluster-node-name, else --node-name, else the "
                         "hostname) must be a lowercase DNS subdomain: it names this node's LannerNode object")
    if kubeconfig is not None and not Path(kubeconfig).is_file():
        raise ValueError(f"--k8s-kubeconfig-path {kubeconfig}: no such file (needed by --kvstore crd)")


def status_line(st: dict) -> str:
    """The ``netdp`` line of ``lanner status``."""
    reqs = ", ".join(f"{k} {v}" for k, v in sorted(st.get("cni_requests", {}).items())) or "none yet"
    return (f"netdp      pod CIDR {st.get('pod_cidr')} (gateway {st.get('gateway')}), {st.get('endpoints', 0)} "
            f"endpoints, datapath {'on' if st.get('datapath') else 'off'}, CNI socket {st.get('cni_socket')}; "
            f"requests: {reqs}")


def add_cni_parser(sub) -> None:
    c = sub.add_parser("cni", help="install the CNI plugin, or run the agent's CNI service alone",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CNI_EPILOG,
                       description="lanner as the node's CNI (plugin lanner-cni, CNI spec 0.4.0-1.1.0).")
    cs = c.add_subparsers(dest="cni_command", metavar="ACTION")
    i = cs.add_parser("install", help="write 10-lanner.conflist and the lanner-cni plugin",
                      description="Write <conf-dir>/10-lanner.conflist and the plugin into <bin-dir>, each file "
                                  "atomically (a temporary file renamed into place): lanner-cni, the compiled "
                                  "client built by 'make cni' (netdp/cni/bin/lanner-cni: the fast path in C, no "
                                  "interpreter start-up), and next to it lanner-cni-py, a launcher running this "
                                  "installation's plugin.py with python -IS, to which the client hands over "
                                  "VERSION and every error path. When the client was not built, the launcher "
                                  "itself is installed as lanner-cni, with a warning. --symlink: a link to the "
                                  "lanner-cni console script instead.")
    i.add_argument("--conf-dir", type=Path, default=Path("/etc/cni/net.d"), metavar="DIR",
                   help="the runtime's CNI config dir (containerd: plugins.cri.cni.conf_dir; default /etc/cni/net.d)")
    i.add_argument("--bin-dir", type=Path, default=Path("/opt/cni/bin"), metavar="DIR",
                   help="the runtime's CNI plugin dir (containerd: plugins.cri.cni.bin_dir; default /opt/cni/bin)")
    i.add_argument("--agent-socket", default=None, metavar="PATH",
                   help=f"agentSocket written into the conflist (default {DEFAULT_SOCKET}; match --cni-socket)")
    i.add_argument("--mtu", type=int, default=None, help="pod interface MTU written into the conflist")
    i.add_argument("--symlink", action="store_true",
                   help="make <bin-dir>/lanner-cni a link to the lanner-cni console script instead of "
                        "installing the compiled client (the script starts an interpreter with site-packages on "
                        "every call: several times slower)")
    s = cs.add_parser("serve", help="run only the CNI service (IPAM, veths, datapath) until Ctrl-C",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      description="The agent's networking half without the security sensors: serves "
                                  "lanner-cni on --cni-socket in the current network namespace. Needs root.")
    net = s.add_argument_group("networking")
    add_netdp_flags(net, with_enable=False)
    net.add_argument("--k8s-kubeconfig-path", type=Path, default=None, metavar="FILE",
                     help="kubeconfig for --kvstore crd (default: in-cluster config, the pod's service account)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def cmd_cni(args: argparse.Namespace) -> int:
    if args.cni_command == "install":
        from lanner.netdp.cni.install import install

        try:
            res = install(args.conf_dir, args.bin_dir, args.agent_socket, args.mtu, symlink=args.symlink)
        except (OSError, ValueError) as exc:
            print(f"lanner cni install: {exc}", file=sys.stderr)
            return 1
        if res.warning:
            print(f"lanner cni install: warning: {res.warning}", file=sys.stderr)
        print(f"wrote {res.conflist}")
        if args.symlink:
            print(f"linked {res.plugin_link} -> {res.plugin_target}")
        elif res.launcher is not None:
            print(f"installed {res.plugin_link} (compiled client, from {res.plugin_target})\n"
                  f"wrote launcher {res.launcher} -> {Path(__file__).with_name('plugin.py').resolve()} "
                  "(its slow path)")
        else:
            print(f"wrote launcher {res.plugin_link} -> {res.plugin_target}")
        return 0
    if args.cni_command == "serve":
        logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        try:
            cfg = netdp_config(args, required=True)
        except ValueError as exc:
            print(f"lanner cni serve: {exc}", file=sys.stderr)
            return 2
        from lanner.netdp.runtime import serve

        try:
            return serve(cfg)
        except (OSError, RuntimeError, ValueError) as exc:
            logging.getLogger("lanner").error("%s", exc)
            return 1
    print("lanner cni: choose an action: install or serve (see 'lanner cni --help')", file=sys.stderr)
    return 2
