"""The lanner datapath as bench/datapath.py runs it: a helper process inside the router netns.

Started by the benchmark with ``nsenter --net=/var/run/netns/<router> python bench/datapath_lanner.py
--spec JSON`` (nsenter keeps /sys, so the pins under /sys/fs/bpf/lanner-bench-* stay visible). It:

 1. opens ``Datapath(pin_dir, store)`` (netdp.datapath) with a LocalFileStore in the run's temp dir and
    the datapath's default flow rate limit (what the agent uses) unless the spec sets one (0 = unlimited);
 2. adds the two pods as endpoints (their router-side veths play the pods' host-side veths), each with
    an identity allocated from its labels (app=bench-a / app=bench-b, namespace "bench");
 3. with ``rules`` > 0, installs one NetworkPolicy selecting bench-b: an ingress rule allowing bench-a
    on the benchmark's ports (TCP 5201/7000/11112, UDP 11111), plus ``rules`` non-matching entries;
 4. prints one JSON line ``{"ok": true, "install_s", "policy_entries", "ipcache_entries", ...}``;
 5. drains flow events (decoded to export dicts, as the agent does) until its stdin closes, then prints
    its counters as a second JSON line (with ``bpf_stats`` in the spec, also each program's run count and
    run time, which the kernel counts while the benchmark holds a BPF_ENABLE_STATS fd) and closes the
    datapath (detach, unpin).

Shapes of the non-matching entries (--lanner-shape of bench/datapath.py):
  per-cidr  (default) ``rules`` ingress rules, each one ipBlock /32 (10.200.x.y) + one TCP port: exactly
            the iptables rule set, giving ``rules`` CIDR identities in the ipcache and ``rules`` policy
            entries.
  grid      B ipBlock /32s x P TCP ports in one rule (P = ceil(sqrt(rules)), B = ceil(rules/P)): as many
            policy entries, but only B ipcache entries (a smaller LPM trie).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from datapath_configs import filler  # noqa: E402

NAMESPACE = "bench"


def policy_doc(rules: int, shape: str, server: dict) -> dict:
    allow_ports = ([{"protocol": "TCP", "port": p} for p in server["tcp_ports"]]
                   + [{"protocol": "UDP", "port": p} for p in server["udp_ports"]])
    ingress: list[dict] = [{"from": [{"podSelector": {"matchLabels": {"app": "bench-a"}}}], "ports": allow_ports}]
    if shape == "per-cidr":
        for i in range(rules):
            src, port = filler(i)
            ingress.append({"from": [{"ipBlock": {"cidr": f"{src}/32"}}], "ports": [{"protocol": "TCP", "port": port}]})
    elif shape == "grid":
        ports = math.ceil(math.sqrt(rules))
        blocks = math.ceil(rules / ports)
        ingress.append({"from": [{"ipBlock": {"cidr": f"{filler(i)[0]}/32"}} for i in range(blocks)],
                        "ports": [{"protocol": "TCP", "port": 20000, "endPort": 20000 + ports - 1}]})
    else:
        raise ValueError(f"unknown shape {shape!r}: grid or per-cidr")
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"bench-{rules}", "namespace": NAMESPACE},
            "spec": {"podSelector": {"matchLabels": {"app": "bench-b"}}, "ingress": ingress}}


def emit(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def run(spec: dict) -> int:
    from lanner.netdp.datapath import Datapath
    from lanner.netdp.endpoint import Endpoint, PodInfo
    from lanner.netdp.identity import LocalFileStore, pod_identity_labels
    from lanner.netdp.netpolicy import parse_network_policy

    state = Path(spec["state_dir"])
    state.mkdir(parents=True, exist_ok=True)
    store = LocalFileStore(state / "identities.json")
    t0 = time.perf_counter()
    from lanner.netdp.datapath import DEFAULT_FLOW_RATE_LIMIT

    rate = spec.get("flow_rate_limit")
    rate = DEFAULT_FLOW_RATE_LIMIT if rate is None else int(rate)
    dp = Datapath(Path(spec["pin_dir"]), store, node_name="bench", flow_rate_limit=rate)
    try:
        eps = {}
        for epid, p in enumerate(spec["pods"], start=1):
            pod = PodInfo(namespace=NAMESPACE, name=p["name"], uid=f"uid-{p['name']}",
                          labels=tuple(sorted(p["labels"].items())))
            ident = store.allocate(pod_identity_labels(pod))
            ep = Endpoint(endpoint_id=epid, container_id=p["name"], ifname=p["ifname"], netns=p["netns"],
                          netns_inode=p["netns_inode"], host_ifname=p["host_ifname"],
                          host_ifindex=p["host_ifindex"], ipv4=p["ip"], mac=p["mac"], identity=ident, pod=pod)
            dp.add_endpoint(ep)
            eps[p["name"]] = ep
        t_ep = time.perf_counter()
        rules = int(spec["rules"])
        shape = spec.get("shape", "per-cidr")
        if rules > 0:
            pol = parse_network_policy(policy_doc(rules, shape, spec["server"]), "bench policy")
            dp.set_network_policies([pol])
        t1 = time.perf_counter()
        server_ep = eps[spec["server"]["pod"]]
        reader = dp.flows()
        emit({"ok": True, "install_s": t1 - t0, "endpoints_s": t_ep - t0, "policy_s": t1 - t_ep,
              "policy_entries": dp.policy_entries(server_ep.endpoint_id),
              "ipcache_entries": len(dp.cidr_identities()) + len(eps), "shape": shape if rules else "none",
              "identities": {n: e.identity for n, e in eps.items()}, "flow_rate_limit": rate})

        done = threading.Event()

        def watch_stdin() -> None:
            try:
                while sys.stdin.read(4096):
                    pass
            finally:
                done.set()

        threading.Thread(target=watch_stdin, daemon=True).start()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        read = 0
        verdicts: dict[str, int] = {}
        while not done.is_set():
            reader.wait(0.01)
            for ev in reader.poll():
                read += 1
                v = ev["flow"]["verdict"]
                verdicts[v] = verdicts.get(v, 0) + 1
        for ev in reader.poll():
            read += 1
        stats = reader.stats()
        ct = len(dp.conntrack())
        progs = {}
        if spec.get("bpf_stats"):  # counted only while the benchmark holds a BPF_ENABLE_STATS fd
            import _common as C

            for name, st in C.bpf_prog_stats(os.getpid()).items():
                if st["run_cnt"]:
                    progs[name] = {**st, "ns_per_run": st["run_time_ns"] / st["run_cnt"]}
        final = {"flow_events_read": read, "flow_verdicts": verdicts, "ring_lost": reader.ring_lost(),
                 "conntrack_entries": ct, "policy_entries": dp.policy_entries(server_ep.endpoint_id), **stats}
        if progs:
            final["bpf_programs"] = progs
        final["ok"] = stats["new_flows"] > 0 and stats["drops"] == 0 and read > 0
        emit(final)
        return 0
    finally:
        dp.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="JSON: pin_dir, state_dir, rules, shape, pods[], server{}")
    a = p.parse_args(argv)
    try:
        return run(json.loads(a.spec))
    except Exception as e:  # the benchmark reads the reason from this line
        traceback.print_exc()
        emit({"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
