"""The ``lanner`` command line: agent, getevents, status, probe, version."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Sequence

from lanner import __version__
from lanner.exporter.grpc_api import DEFAULT_ADDRESS, DEFAULT_INFO_FILE
from lanner import rules_cli
from lanner.netdp.cni import cli as netdp_cli

EPILOG = """\
examples:
  lanner agent                              stream exec/exit events as JSON to stdout
  lanner agent --export-file /var/log/lanner/events.log --no-export-stdout
  lanner getevents -o compact               follow the running agent, one line per event
  lanner getevents --process curl --event-types PROCESS_EXEC
  lanner status                             counters, losses, cache size
  lanner probe -o json                      what this kernel's eBPF can do
  lanner agent --enable-netdp --pod-cidr 10.200.0.0/24   also be this node's CNI ('lanner cni --help')
"""


def _positive_int(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return v


def _size(text: str) -> int:
    """Bytes with an optional K/M/G suffix (powers of two)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1 << {"K": 10, "M": 20, "G": 30}[t[-1]]
        t = t[:-1]
    try:
        return _positive_int(t) * mult
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4096, 256K, 8M)") from None


def _perm(text: str) -> int:
    try:
        v = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal file mode such as 600") from None
    if not 0 <= v <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file mode")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lanner", description="lanner: eBPF runtime security for Linux and Kubernetes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"lanner {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # ---------------------------------------------------------------- agent
    a = sub.add_parser(
        "agent", help="run the agent (root): load the sensors, stream events",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Load the BPF sensors, seed the process cache from /proc and export every exec and exit "
                    "as Tetragon-compatible JSON lines. SIGINT/SIGTERM detach every program and exit.")
    g = a.add_argument_group("export")
    g.add_argument("--export-stdout", action=argparse.BooleanOptionalAction, default=True,
                   help="write JSON events to stdout")
    g.add_argument("--export-filename", "--export-file", dest="export_file", metavar="PATH",
                   help="also write JSON events to this file, rotated by size")
    g.add_argument("--export-file-max-size-mb", type=float, default=10.0, metavar="MB",
                   help="rotate the export file when it would grow past this size")
    g.add_argument("--export-file-max-backups", type=int, default=5, metavar="N",
                   help="rotated files to keep (NAME.1 is the newest)")
    g.add_argument("--export-file-compress", action="store_true", help="gzip rotated files")
    g.add_argument("--export-file-perm", type=_perm, default=0o600, metavar="MODE",
                   help="file mode of the export file (octal)")
    g.add_argument("--export-allowlist", metavar="FILTERS",
                   help="export only events matching one of these filters: Tetragon's format, one JSON filter per "
                        "line, inline or @FILE (e.g. '{\"event_set\":[\"PROCESS_EXEC\"]}')")
    g.add_argument("--export-denylist", metavar="FILTERS",
                   help="drop events matching any of these filters (wins over the allowlist)")
    g.add_argument("--field-filters", metavar="FILTERS",
                   help="include/exclude fields per event type, e.g. "
                        "'{\"fields\":\"process.binary,process.pid\",\"action\":\"INCLUDE\"}'")
    g.add_argument("--redaction-filters", metavar="FILTERS",
                   help="replace regex capture groups in arguments with *****, e.g. "
                        "'{\"redact\":[\"--password[= ](\\\\S+)\"]}'")
    g.add_argument("--export-rate-limit", type=int, default=-1, metavar="N",
                   help="export at most N events per minute (-1: no limit); drops are reported as rate_limit_info")
    g.add_argument("--enable-process-cred", action="store_true",
                   help="include cap and process_credentials in process objects (off by default, as in "
                        "Tetragon: they add about 3 KB to every event)")
    g.add_argument("--enable-process-ns", action="store_true",
                   help="include namespace inodes (with is_host) in process objects")
    g = a.add_argument_group("process tracking")
    g.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                   help="node name in events and exec_ids (env NODE_NAME)")
    g.add_argument("--process-cache-size", type=_positive_int, default=65536, metavar="N",
                   help="processes kept in the cache before the oldest are evicted")
    g.add_argument("--execve-map-entries", type=_positive_int, default=65536, metavar="N",
                   help="live processes the kernel-side map can hold")
    g.add_argument("--args-max", type=_positive_int, default=8192, metavar="BYTES",
                   help="argv bytes captured per exec (1..8192); longer argv is flagged truncArgs")
    g.add_argument("--procfs", dest="procfs_seed", action=argparse.BooleanOptionalAction, default=True,
                   help="seed the cache with processes already running (flag procFS)")
    g = a.add_argument_group("tracing policies")
    g.add_argument("--tracing-policy", action="append", type=Path, default=[], metavar="FILE",
                   help="load this TracingPolicy file at start (repeatable)")
    g.add_argument("--tracing-policy-dir", metavar="DIR", default=None,
                   help="load every *.yaml/*.yml TracingPolicy in this directory at start (default: lanner's "
                        "built-in rule library, mapped to MITRE ATT&CK; "
                        "see docs/rules.md and the --rules-* flags); an empty value loads none. "
                        "Policies load in the background once "
                        "exec/exit events flow; one that fails to load (a BPF program the kernel rejects, a "
                        "missing hook) is a warning, listed by 'lanner tp list' as load_error or "
                        "partially_enabled with the reason, never a stop")
    rules_cli.add_agent_flags(g)
    g = a.add_argument_group("BPF")
    g.add_argument("--rb-size", type=_size, default=8 << 20, metavar="BYTES",
                   help="ring buffer size, a power of two >= 4096 (e.g. 8M); events are lost, and counted, "
                        "when it fills")
    g.add_argument("--bpf-pin-dir", type=Path, default=None, metavar="DIR",
                   help="pin the process maps under this directory (must be under /sys/fs/bpf/lanner) while "
                        "running; removed at exit (default: none, or /sys/fs/bpf/lanner with "
                        "--keep-sensors-on-exit)")
    g.add_argument("--keep-sensors-on-exit", action="store_true",
                   help="at stop, leave every program attached and pinned under the pin dir (kept/): policies "
                        "keep enforcing (e.g. Sigkill) and exec/exit keep being recorded while no agent runs. The "
                        "next agent started with the same pin dir takes over without a gap: it reuses the process "
                        "maps (exec_ids unchanged, the cache rebuilt, what happened meanwhile exported), attaches "
                        "its own programs, then detaches the kept ones. A stop without the flag removes every pin. "
                        "To detach kept programs without starting an agent: rm -r PIN_DIR/kept")
    g.add_argument("--skip-probe", action="store_true", help="do not probe kernel features at start")
    g = a.add_argument_group("service")
    g.add_argument("--server-address", default=DEFAULT_ADDRESS, metavar="ADDR",
                   help="gRPC API (Tetragon's FineGuidanceSensors): unix:///path or host:port; empty disables it")
    g.add_argument("--server-tls-cert-file", metavar="PEM", help="serve TCP with TLS using this certificate")
    g.add_argument("--server-tls-key-file", metavar="PEM", help="the TLS private key")
    g.add_argument("--server-tls-client-ca-files", metavar="PEM",
                   help="require client certificates signed by this CA (mTLS)")
    g.add_argument("--enable-deprecated-tracingpolicy-grpc", action="store_true",
                   help="serve the deprecated EnableTracingPolicy/DisableTracingPolicy RPCs")
    g.add_argument("--server-events-address", metavar="unix:///PATH", default=None,
                   help="also serve the API on this second unix socket with every call answered by lanner itself "
                        "(GetEvents framed, many events per HTTP/2 frame); off by default")
    g.add_argument("--server-grpcio-events", action="store_true",
                   help="on a unix --server-address, let grpcio's server stream GetEvents (one event per write, "
                        "about 18k events/s) instead of lanner's framing. By default the agent owns the socket, "
                        "streams a connection whose first call is GetEvents itself (tetra getevents) and hands "
                        "every other connection to grpcio on a private socket beside it (.NAME.grpcio)")
    g.add_argument("--server-client-queue-size", type=_positive_int, default=65536, metavar="N",
                   help="events buffered per GetEvents client; a client that falls further behind loses events "
                        "(counted in tetragon_notify_overflowed_events_total), the agent never waits for it. The "
                        "default holds several of the agent's batches (one per 100 ms turn): about 0.3 s of lag at "
                        "200k events/s; clients without filters share one copy of each batch")
    g.add_argument("--info-file", type=Path, default=DEFAULT_INFO_FILE,
                   help="where the agent writes its API address for clients")
    g.add_argument("--metrics-server", metavar="[ADDR]:PORT", default=None,
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics (off by default; e.g. :2112)")
    g.add_argument("--health-server-address", metavar="[ADDR]:PORT", default=":6789",
                   help="HTTP /healthz and /readyz for Kubernetes probes; empty disables it")
    g.add_argument("--enable-bpf-stats", action="store_true",
                   help="enable the kernel's BPF run-time statistics while the agent runs "
                        "(tetragon_overhead_program_* metrics)")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    netdp_cli.add_netdp_flags(a.add_argument_group("networking (CNI and eBPF datapath; off by default)"),
                              with_enable=True)
    g = a.add_argument_group("Kubernetes API (off by default; docs/kubernetes.md)")
    g.add_argument("--enable-k8s-api", action="store_true",
                   help="watch the Kubernetes API: TracingPolicy and TracingPolicyNamespaced objects are loaded, "
                        "reloaded on a spec edit and unloaded on delete (spec.nodeSelector against this node's "
                        "labels: --node-name); a load error or skip on this node is posted as an Event on the "
                        "policy ('kubectl describe tgtp NAME'). The agent is ready without the API: an "
                        "unreachable server or missing CRDs are retried in the background ('lanner status'). "
                        "Also: this node's pods enrich events and scope namespaced policies; with "
                        "--enable-netdp, NetworkPolicies come from the API too and, without --pod-cidr, the "
                        "Node's spec.podCIDR is read at start (waiting up to 30 s for it)")
    g.add_argument("--k8s-kubeconfig-path", type=Path, default=None, metavar="FILE",
                   help="kubeconfig to reach the API server (default: in-cluster config, the pod's "
                        "service account)")

    # ---------------------------------------------------------------- getevents
    e = sub.add_parser(
        "getevents", help="follow the running agent's events (gRPC GetEvents)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the agent's live event stream. Filters run in the agent: different flags are ANDed, "
                    "repeated values ORed (Tetragon's Filter semantics). When stdin is a pipe, JSON events are "
                    "read from it instead (e.g. to render an export file compactly).",
        epilog="examples:\n  lanner getevents -o compact\n  lanner getevents --pid 1234 -e PROCESS_EXIT\n"
               "  lanner getevents --namespace default --pod 'web-.*'\n"
               "  lanner getevents -o compact < /var/log/lanner/events.log")
    e.add_argument("-o", "--output", choices=["json", "compact"], default="json")
    e.add_argument("--process", action="append", default=[], metavar="REGEX",
                   help="only processes whose binary matches (repeatable)")
    e.add_argument("--pid", action="append", type=int, default=[], help="only this pid (repeatable)")
    e.add_argument("-e", "--event-types", action="append", default=[], metavar="TYPES",
                   help="comma-separated: PROCESS_EXEC, PROCESS_EXIT, PROCESS_KPROBE, ...")
    e.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                   help="only pods in this Kubernetes namespace (repeatable)")
    e.add_argument("--host", action="store_true", help="only host processes (not in a pod)")
    e.add_argument("--pod", action="append", default=[], metavar="REGEX", help="only pods whose name matches")
    e.add_argument("--policy-names", action="append", default=[], metavar="NAME",
                   help="only events of this tracing policy (repeatable)")
    e.add_argument("-f", "--field-filter", dest="include_fields", metavar="FIELDS",
                   help="only these fields, comma-separated (e.g. process.binary,process.pid)")
    e.add_argument("-F", "--exclude-fields", metavar="FIELDS", help="drop these fields, comma-separated")
    e.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    e.add_argument("--timestamps", action="store_true", help="prefix compact lines with the event time")
    e.add_argument("--reconnect", action="store_true", help="keep retrying when the agent is down or restarts")
    _client_flags(e)

    s = sub.add_parser("status", help="the running agent's counters (events, losses, cache, API clients)")
    s.add_argument("-o", "--output", choices=["text", "json"], default="text")
    _client_flags(s)

    pr = sub.add_parser("probe", help="report which eBPF features this kernel supports",
                        description="Load a tiny program per feature (program and attach types, helpers) and "
                                    "report what this kernel supports, why not where it does not, and which "
                                    "mechanism the agent picks for each kind of hook. Needs root.")
    pr.add_argument("-o", "--output", choices=["table", "json"], default="table")
    pr.add_argument("--programs", action="store_true",
                    help="instead: load every BPF program lanner ships, as the agent configures it (nothing is "
                         "attached), and print what the verifier spent on each: processed instructions and their "
                         "share of the 1M limit (lanner's budget: 20 %%), peak states and verification time. "
                         "Exit code 1 when a program is over the budget or rejected.")

    v = sub.add_parser("version", help="client and agent versions")
    _client_flags(v)

    # ---------------------------------------------------------------- tracingpolicy
    tp = sub.add_parser(
        "tracingpolicy", aliases=["tp"], help="manage TracingPolicies in the running agent",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Add, list, delete, enable and disable Tetragon-format TracingPolicies "
                    "(cilium.io/v1alpha1 TracingPolicy and TracingPolicyNamespaced) in the running agent.",
        epilog="examples:\n  lanner tracingpolicy add policy.yaml\n  lanner tp list -o json\n"
               "  lanner tp set-mode my-policy monitor\n  lanner tp delete my-policy\n"
               "  lanner tp delete shop-policy -n shop   # a TracingPolicyNamespaced in namespace shop\n\n"
               "A TracingPolicyNamespaced runs only for the pods of its namespace, and spec.podSelector /\n"
               "containerSelector narrow a policy to some pods / containers: the agent learns them with\n"
               "--enable-netdp (CNI and the CRI). `list` shows how many it runs for on this node.")
    tps = tp.add_subparsers(dest="tp_command", metavar="ACTION")
    t = tps.add_parser("add", help="load a policy file (all documents in it)")
    t.add_argument("file", type=Path)
    t.add_argument("--mode", choices=["enforce", "monitor"], help="override the policy's mode")
    _client_flags(t)
    t = tps.add_parser("list", help="policies with state, mode, hooks and errors")
    t.add_argument("-o", "--output", choices=["text", "json"], default="text")
    _client_flags(t)
    for name, hlp in (("delete", "unload a policy"), ("enable", "re-attach a disabled policy"),
                      ("disable", "detach a policy, keeping it loaded")):
        t = tps.add_parser(name, help=hlp)
        t.add_argument("name")
        t.add_argument("-n", "--namespace", default="", help="namespace of a TracingPolicyNamespaced")
        _client_flags(t)
    t = tps.add_parser("set-mode", help="switch a policy between enforce and monitor")
    t.add_argument("name")
    t.add_argument("mode", choices=["enforce", "monitor"])
    t.add_argument("-n", "--namespace", default="")
    _client_flags(t)

    netdp_cli.add_cni_parser(sub)
    rules_cli.add_parser(sub)
    return p


def _client_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--server-address", metavar="ADDR",
                   help=f"the agent's gRPC API (default: from {DEFAULT_INFO_FILE}, else {DEFAULT_ADDRESS})")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a reply")
    g.add_argument("--tls-ca-file", metavar="PEM", help="verify the server with this CA (TCP with TLS)")
    g.add_argument("--tls-cert-file", metavar="PEM", help="client certificate (mTLS)")
    g.add_argument("--tls-key-file", metavar="PEM", help="client key (mTLS)")
    g.add_argument("--tls-server-name", metavar="NAME", help="expected server name in its certificate")


def _client(args: argparse.Namespace):
    from lanner.client import AgentClient, TlsOptions

    return AgentClient(args.server_address, args.timeout,
                       TlsOptions(args.tls_ca_file, args.tls_cert_file, args.tls_key_file, args.tls_server_name))


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def cmd_agent(args: argparse.Namespace) -> int:
    from lanner import memory

    memory.configure()  # one malloc arena: before any thread exists (docs/performance.md §3)
    _setup_logging(args.log_level)
    from lanner.agent import AgentConfig, run_agent

    if os.geteuid() != 0:
        print("lanner agent: must run as root (it loads BPF programs)", file=sys.stderr)
        return 1
    if not (1 <= args.args_max <= 8192):
        print(f"lanner agent: --args-max must be between 1 and 8192, got {args.args_max}", file=sys.stderr)
        return 2
    if args.rb_size < 4096 or args.rb_size & (args.rb_size - 1):
        print(f"lanner agent: --rb-size must be a power of two of at least 4096 bytes, got {args.rb_size}",
              file=sys.stderr)
        return 2
    from lanner.exporter.fieldfilters import FieldFilterSet, Redactor
    from lanner.exporter.filters import FilterError, load_filter_arg

    try:
        allow = load_filter_arg(args.export_allowlist, "--export-allowlist")
        deny = load_filter_arg(args.export_denylist, "--export-denylist")
        fields = FieldFilterSet.parse_lines(_arg_text(args.field_filters), "--field-filters")
        redact = Redactor.parse_lines(_arg_text(args.redaction_filters), "--redaction-filters")
    except (FilterError, OSError) as exc:
        print(f"lanner agent: {exc}", file=sys.stderr)
        return 2
    if args.export_rate_limit < -1:
        print("lanner agent: --export-rate-limit must be -1 (no limit) or >= 0", file=sys.stderr)
        return 2
    from lanner.exporter.grpc_api import GrpcConfig

    grpc_cfg = None
    if args.server_address:
        grpc_cfg = GrpcConfig(address=args.server_address, tls_cert=args.server_tls_cert_file,
                              tls_key=args.server_tls_key_file, tls_client_ca=args.server_tls_client_ca_files,
                              enable_deprecated_policy_rpcs=args.enable_deprecated_tracingpolicy_grpc,
                              max_queue=args.server_client_queue_size,
                              events_address=args.server_events_address, info_file=args.info_file,
                              framed_events=not args.server_grpcio_events)
    try:
        k8s_cfg = _k8s_config(args)
        netdp_cfg = netdp_cli.netdp_config(args, required=False)
    except (ValueError, RuntimeError) as exc:
        print(f"lanner agent: {exc}", file=sys.stderr)
        return 2
    cfg = AgentConfig(
        netdp=netdp_cfg, k8s=k8s_cfg,
        node_name=args.node_name, export_stdout=args.export_stdout, export_file=args.export_file,
        export_file_max_mb=args.export_file_max_size_mb, export_file_max_backups=args.export_file_max_backups,
        export_file_compress=args.export_file_compress, export_file_perm=args.export_file_perm,
        grpc=grpc_cfg, pin_dir=args.bpf_pin_dir, keep_sensors=args.keep_sensors_on_exit,
        process_cache_size=args.process_cache_size,
        rb_size=args.rb_size, execve_map_entries=args.execve_map_entries, args_max=args.args_max,
        procfs_seed=args.procfs_seed, process_cred=args.enable_process_cred, process_ns=args.enable_process_ns,
        run_probe=not args.skip_probe, export_allowlist=allow, export_denylist=deny, field_filters=fields,
        redaction=redact, export_rate_limit=args.export_rate_limit, metrics_address=args.metrics_server,
        health_address=args.health_server_address or None, bpf_stats=args.enable_bpf_stats,
        tracing_policies=tuple(args.tracing_policy),
        tracing_policy_dir=rules_cli.agent_rules_dir(args, _builtin_rules_dir() if args.tracing_policy_dir is None
                                                     else (Path(args.tracing_policy_dir) if args.tracing_policy_dir
                                                           else None)))
    try:
        return run_agent(cfg)
    except (OSError, RuntimeError, ValueError) as exc:
        logging.getLogger("lanner").error("%s", exc)
        return 1


def _k8s_config(args: argparse.Namespace):  # -> lanner.k8s.client.K8sConfig | None
    """--enable-k8s-api's config; with --enable-netdp and no --pod-cidr, the Node's spec.podCIDR becomes it
    (read now: the only wait for the API at start). ValueError/RuntimeError name the flag or the Node."""
    if not args.enable_k8s_api:
        if args.k8s_kubeconfig_path is not None:
            raise ValueError("--k8s-kubeconfig-path needs --enable-k8s-api")
        return None
    from lanner.k8s.client import K8sConfig

    if args.k8s_kubeconfig_path is not None and not args.k8s_kubeconfig_path.is_file():
        raise ValueError(f"--k8s-kubeconfig-path {args.k8s_kubeconfig_path}: no such file")
    cfg = K8sConfig(node_name=args.node_name, kubeconfig=args.k8s_kubeconfig_path)
    if getattr(args, "enable_netdp", False) and not args.pod_cidr:
        from lanner.k8s.nodes import node_pod_cidr

        args.pod_cidr = node_pod_cidr(cfg)
        logging.getLogger("lanner").info("pod CIDR %s from Node %s", args.pod_cidr, args.node_name)
    return cfg


def _builtin_rules_dir() -> Path:
    import lanner.rules

    return Path(lanner.rules.__file__).parent


def _arg_text(value: str | None) -> str:
    """A filter flag's text: inline, or @FILE."""
    if not value:
        return ""
    if value.startswith("@"):
        return Path(value[1:]).read_text()
    return value


def _event_types(values: list[str]) -> list[str]:
    out = []
    for v in values:
        out += [t for t in (x.strip() for x in v.split(",")) if t]
    return out


def _filter_request(args: argparse.Namespace) -> dict:
    """The getevents flags as one Tetragon Filter (keys ANDed)."""
    from lanner.exporter.filters import FilterError, event_kind

    f: dict = {}
    types = _event_types(args.event_types)
    if types:
        try:
            f["event_set"] = [event_kind(t, "--event-types").upper() for t in types]
        except FilterError as exc:
            raise ValueError(str(exc)) from None
    if args.pid:
        f["pid"] = args.pid
    if args.process:
        f["binary_regex"] = args.process
    if args.namespace or args.host:
        f["namespace"] = args.namespace + ([""] if args.host else [])
    if args.pod:
        f["pod_regex"] = args.pod
    if args.policy_names:
        f["policy_names"] = args.policy_names
    return f


def cmd_getevents(args: argparse.Namespace) -> int:
    import time

    import orjson

    from lanner.client import AgentUnavailable, ApiError, event_json
    from lanner.exporter.compact import CompactFormatter
    from lanner.exporter.filters import FilterError, FilterSet, JsonEventView

    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    fmt = CompactFormatter(color=color, timestamps=args.timestamps)
    try:
        flt = _filter_request(args)
        fset = FilterSet.from_lists([flt] if flt else [], [])
    except (ValueError, FilterError) as exc:
        print(f"lanner getevents: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout

    def show(line: bytes) -> None:
        if args.output == "json":
            out.write(line.decode() + "\n")
        else:
            text = fmt.format(orjson.loads(line))
            if text is not None:
                out.write(text + "\n")
        out.flush()

    try:
        if not sys.stdin.isatty() and not _stdin_is_empty_device():
            return _events_from_stdin(fset, args, show)
        request = _events_request(flt, args)
        while True:
            try:
                with _client(args) as client:
                    for ev in client.events(request):
                        show(event_json(ev))
                if not args.reconnect:
                    return 0
            except AgentUnavailable as exc:
                if not args.reconnect:
                    raise
                print(f"lanner getevents: {exc}; retrying in 2 s", file=sys.stderr)
            time.sleep(2)
    except (AgentUnavailable, ApiError) as exc:
        print(f"lanner getevents: {exc}", file=sys.stderr)
        return 1
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


def _events_request(flt: dict, args: argparse.Namespace):
    from google.protobuf import json_format

    from lanner.exporter.api.gen.tetragon import events_pb2

    req = events_pb2.GetEventsRequest()
    if flt:
        json_format.ParseDict(flt, req.allow_list.add())
    for fields, action in ((args.include_fields, events_pb2.INCLUDE), (args.exclude_fields, events_pb2.EXCLUDE)):
        if fields:
            ff = req.field_filters.add(action=action)
            ff.fields.paths.extend(p.strip() for p in fields.split(",") if p.strip())
    return req


def _events_from_stdin(fset, args: argparse.Namespace, show) -> int:
    import orjson

    from lanner.exporter.fieldfilters import FieldFilterSet
    from lanner.exporter.filters import JsonEventView

    lines = []
    if args.include_fields:
        lines.append(orjson.dumps({"fields": args.include_fields, "action": "INCLUDE"}).decode())
    if args.exclude_fields:
        lines.append(orjson.dumps({"fields": args.exclude_fields, "action": "EXCLUDE"}).decode())
    ff = FieldFilterSet.parse_lines("\n".join(lines), "fields")
    for raw in sys.stdin.buffer:
        raw = raw.strip()
        if not raw:
            continue
        ev = orjson.loads(raw)
        view = JsonEventView.from_event(ev)
        if view is None or not fset.admits(view):
            continue
        show(orjson.dumps(ff.apply(view.kind, ev)) if ff else raw)
    return 0


def _stdin_is_empty_device() -> bool:
    """True when stdin is /dev/null or closed (e.g. under CI), which is not a stream of events."""
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return True
    return stat.S_ISCHR(mode) or not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode))


def cmd_status(args: argparse.Namespace) -> int:
    import orjson

    from lanner.client import AgentUnavailable, ApiError

    try:
        with _client(args) as client:
            st = client.status()
    except (AgentUnavailable, ApiError) as exc:
        print(f"lanner status: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode())
        return 0
    rb, pc, api = st["ringbuf"], st["process_cache"], st.get("api", {})
    print(f"agent      running (pid {st['pid']}, version {st['version']}, node {st['node_name']}, "
          f"up {st['uptime_s']:.0f}s, ready in {st['ready_s']:.2f}s)")
    print(f"sensors    {', '.join(st['sensors'])}" + (f"; process records: {st['fastpath']}" if st.get("fastpath") else ""))
    print("events     " + ", ".join(f"{k} {v}" for k, v in st["events"].items()))
    print(f"ringbuf    {rb['size_bytes']} bytes, lost {rb['lost_total']}")
    print(f"cache      {pc['size']}/{pc['capacity']} processes, evictions {pc['evictions']}, misses {pc['misses']}")
    print(f"api        {api.get('address')}: {api.get('clients', 0)} clients following, "
          f"dropped {api.get('dropped', 0)}")
    states = st.get("policy_states") or {}
    print("policies   " + (", ".join(f"{n} {k}" for k, n in sorted(states.items())) or "none"))
    for bad in st.get("policy_problems", []):
        ns = f" ({bad['namespace']})" if bad["namespace"] else ""
        print(f"  {bad['name']}{ns}: {bad['state']}: {bad['error']}")
    if st.get("keep_sensors_on_exit"):
        print(f"keep       programs stay attached at stop, pinned under {st.get('pin_dir')}/kept")
    if "netdp" in st:
        print(netdp_cli.status_line(st["netdp"]))
    if "k8s" in st:
        k = st["k8s"]
        watches = ", ".join(f"{n} {w['state']} ({w['objects']})" for n, w in k.get("watches", {}).items())
        print(f"kubernetes {k.get('server') or '-'}: {'connected' if k.get('connected') else 'not connected'}"
              f"{': ' + k['error'] if k.get('error') else ''}; {watches or 'no watch'}")
        nps = k.get("network_policies")
        if nps:
            refused = "".join(f"\n  {key}: refused: {why}" for key, why in sorted(nps.get("refused", {}).items()))
            print(f"netpol     {nps.get('from_api', 0)} NetworkPolicies from the API, {nps.get('files', 0)} from files, "
                  f"{nps.get('namespaces', 0)} namespaces' labels; sets applied {nps.get('applied', 0)}"
                  f"{'; not applied: ' + nps['error'] if nps.get('error') else ''}{refused}")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from lanner.client import AgentUnavailable, ApiError

    print(f"client  {__version__}")
    try:
        with _client(args) as client:
            print(f"agent   {client.version()}")
    except (AgentUnavailable, ApiError):
        print("agent   not running")
    return 0


def cmd_tracingpolicy(args: argparse.Namespace) -> int:
    import orjson
    from google.protobuf import json_format

    from lanner.client import AgentUnavailable, ApiError
    from lanner.exporter.api.gen.tetragon import sensors_pb2

    if not args.tp_command:
        print("lanner tracingpolicy: choose an action: add, list, delete, enable, disable, set-mode "
              "(see lanner tracingpolicy --help)", file=sys.stderr)
        return 2
    mode_value = {"enforce": sensors_pb2.TP_MODE_ENFORCE, "monitor": sensors_pb2.TP_MODE_MONITOR}
    try:
        with _client(args) as client:
            if args.tp_command == "add":
                try:
                    text = args.file.read_text()
                except OSError as exc:
                    print(f"lanner tracingpolicy add: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
                    return 2
                if args.mode:
                    text = _with_mode(text, args.mode)
                client.add_policy(text)
                print(f"loaded {args.file}")
            elif args.tp_command == "list":
                policies = client.list_policies()
                if args.output == "json":
                    print(orjson.dumps([json_format.MessageToDict(p, preserving_proto_field_name=True)
                                        for p in policies], option=orjson.OPT_INDENT_2).decode())
                else:
                    _print_policies(policies)
            elif args.tp_command == "delete":
                client.delete_policy(args.name, args.namespace)
                print(f"deleted {args.name}")
            elif args.tp_command in ("enable", "disable"):
                client.configure_policy(args.name, args.namespace, enable=args.tp_command == "enable")
                print(f"{args.tp_command}d {args.name}")
            elif args.tp_command == "set-mode":
                client.configure_policy(args.name, args.namespace, mode=mode_value[args.mode])
                print(f"{args.name}: mode {args.mode}")
    except (AgentUnavailable, ApiError) as exc:
        print(f"lanner tracingpolicy {args.tp_command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _with_mode(text: str, mode: str) -> str:
    """Set spec.options policy-mode in every document of a policy file."""
    import yaml

    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for d in docs:
        if isinstance(d, dict) and isinstance(d.get("spec"), dict):
            opts = [o for o in d["spec"].get("options") or [] if o.get("name") != "policy-mode"]
            d["spec"]["options"] = opts + [{"name": "policy-mode", "value": mode}]
    return yaml.safe_dump_all(docs, sort_keys=False)


def _print_policies(policies: list) -> None:
    """The `tetra tp list` table, then per policy one line per hook (TracingPolicyStatus.info: how each
    hook is served, or why it is unavailable, with its in-kernel counters) and the error if any."""
    from lanner.exporter.api.gen.tetragon import sensors_pb2

    rows = [("ID", "NAME", "STATE", "NAMESPACE", "SENSORS", "KERNELMEMORY", "MODE", "NPOST", "NENFORCE",
             "NMONITOR")]
    for p in policies:
        st = p.stats.action_counters if p.HasField("stats") else None
        enforce = (st.signal + st.override + st.notify_enforcer + st.set) if st else 0
        monitor = (st.monitor_signal + st.monitor_override + st.monitor_notify_enforcer + st.monitor_set) if st else 0
        rows.append((str(p.id), p.name, sensors_pb2.TracingPolicyState.Name(p.state).removeprefix("TP_STATE_").lower(),
                     p.namespace or "(global)", ",".join(p.sensors),
                     f"{p.kernel_memory_bytes / 1024:.2f} kB",
                     sensors_pb2.TracingPolicyMode.Name(p.mode).removeprefix("TP_MODE_").lower(),
                     str(st.post if st else 0), str(enforce), str(monitor)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for p in policies:
        hooks = [h for h in p.info.split("; ") if h] if p.info else []
        if not hooks and not p.error:
            continue
        print(f"\n{p.name}{' (' + p.namespace + ')' if p.namespace else ''}:")
        for h in hooks:
            print(f"  {h}")
        if p.error and not hooks:
            print(f"  error: {p.error}")


def cmd_probe(args: argparse.Namespace) -> int:
    _setup_logging("warning")
    from lanner.kernel.probe import main as probe_main

    return probe_main(["-o", args.output] + (["--programs"] if args.programs else []))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"agent": cmd_agent, "getevents": cmd_getevents, "status": cmd_status, "version": cmd_version,
                "probe": cmd_probe, "tracingpolicy": cmd_tracingpolicy, "tp": cmd_tracingpolicy,
                "cni": netdp_cli.cmd_cni, "rules": rules_cli.cmd_rules}
    if args.command is None:
        parser.print_help()
        return 2
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
