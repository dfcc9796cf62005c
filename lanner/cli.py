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
from lanner.localapi import DEFAULT_SOCKET

EPILOG = """\
examples:
  lanner agent                              stream exec/exit events as JSON to stdout
  lanner agent --export-file /var/log/lanner/events.log --no-export-stdout
  lanner getevents -o compact               follow the running agent, one line per event
  lanner getevents --process curl --event-types PROCESS_EXEC
  lanner status                             counters, losses, cache size
  lanner probe -o json                      what this kernel's eBPF can do
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
    g = a.add_argument_group("BPF")
    g.add_argument("--rb-size", type=_size, default=8 << 20, metavar="BYTES",
                   help="ring buffer size, a power of two >= 4096 (e.g. 8M); events are lost, and counted, "
                        "when it fills")
    g.add_argument("--bpf-pin-dir", type=Path, default=None, metavar="DIR",
                   help="pin the process maps under this directory (must be under /sys/fs/bpf/lanner) while "
                        "running; removed at exit")
    g.add_argument("--skip-probe", action="store_true", help="do not probe kernel features at start")
    g = a.add_argument_group("service")
    g.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, help="local API socket (getevents, status)")
    g.add_argument("--metrics-server", metavar="[ADDR]:PORT", default=None,
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics (off by default; e.g. :2112)")
    g.add_argument("--health-server-address", metavar="[ADDR]:PORT", default=":6789",
                   help="HTTP /healthz and /readyz for Kubernetes probes; empty disables it")
    g.add_argument("--enable-bpf-stats", action="store_true",
                   help="enable the kernel's BPF run-time statistics while the agent runs "
                        "(tetragon_overhead_program_* metrics)")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    # ---------------------------------------------------------------- getevents
    e = sub.add_parser(
        "getevents", help="follow the running agent's events",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the agent's live event stream. Filters are applied in the agent: flags of different "
                    "kinds are ANDed, repeated values ORed. When stdin is a pipe, events are read from it "
                    "instead (e.g. to render an export file compactly).",
        epilog="examples:\n  lanner getevents -o compact\n  lanner getevents --pid 1234 -e PROCESS_EXIT\n"
               "  cat /var/log/lanner/events.log | lanner getevents -o compact")
    e.add_argument("-o", "--output", choices=["json", "compact"], default="json")
    e.add_argument("--process", action="append", default=[], metavar="REGEX",
                   help="only processes whose binary matches (repeatable)")
    e.add_argument("--pid", action="append", type=int, default=[], help="only this pid (repeatable)")
    e.add_argument("-e", "--event-types", action="append", default=[], metavar="TYPES",
                   help="comma-separated: PROCESS_EXEC, PROCESS_EXIT")
    e.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    e.add_argument("--timestamps", action="store_true", help="prefix compact lines with the event time")
    e.add_argument("--socket", type=Path, default=DEFAULT_SOCKET)

    s = sub.add_parser("status", help="the running agent's counters (events, losses, cache)")
    s.add_argument("-o", "--output", choices=["text", "json"], default="text")
    s.add_argument("--socket", type=Path, default=DEFAULT_SOCKET)

    pr = sub.add_parser("probe", help="report which eBPF features this kernel supports",
                        description="Load a tiny program per feature (program and attach types, helpers) and "
                                    "report what this kernel supports, why not where it does not, and which "
                                    "mechanism the agent picks for each kind of hook. Needs root.")
    pr.add_argument("-o", "--output", choices=["table", "json"], default="table")

    v = sub.add_parser("version", help="client and agent versions")
    v.add_argument("--socket", type=Path, default=DEFAULT_SOCKET)
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def cmd_agent(args: argparse.Namespace) -> int:
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
    cfg = AgentConfig(
        node_name=args.node_name, export_stdout=args.export_stdout, export_file=args.export_file,
        export_file_max_mb=args.export_file_max_size_mb, export_file_max_backups=args.export_file_max_backups,
        export_file_compress=args.export_file_compress, export_file_perm=args.export_file_perm,
        socket_path=args.socket, pin_dir=args.bpf_pin_dir, process_cache_size=args.process_cache_size,
        rb_size=args.rb_size, execve_map_entries=args.execve_map_entries, args_max=args.args_max,
        procfs_seed=args.procfs_seed, process_cred=args.enable_process_cred, process_ns=args.enable_process_ns,
        run_probe=not args.skip_probe, export_allowlist=allow, export_denylist=deny, field_filters=fields,
        redaction=redact, export_rate_limit=args.export_rate_limit, metrics_address=args.metrics_server,
        health_address=args.health_server_address or None, bpf_stats=args.enable_bpf_stats)
    try:
        return run_agent(cfg)
    except (OSError, RuntimeError, ValueError) as exc:
        logging.getLogger("lanner").error("%s", exc)
        return 1


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


def cmd_getevents(args: argparse.Namespace) -> int:
    import orjson

    from lanner.exporter.compact import CompactFormatter
    from lanner.exporter.filters import JsonEventView
    from lanner.localapi import AgentUnavailable, LocalApiClient, RequestError, request_filters

    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    fmt = CompactFormatter(color=color, timestamps=args.timestamps)
    from lanner.exporter.filters import FilterError, event_kind

    types = _event_types(args.event_types)
    try:
        for t in types:
            event_kind(t, "--event-types")
    except FilterError as exc:
        print(f"lanner getevents: {exc}", file=sys.stderr)
        return 2
    req = {"event_types": types, "pids": args.pid, "binary_regex": args.process}
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
            flt = request_filters(req)
            for raw in sys.stdin.buffer:
                raw = raw.strip()
                if not raw:
                    continue
                view = JsonEventView.from_event(orjson.loads(raw))
                if view is not None and flt.admits(view):
                    show(raw)
            return 0
        for line in LocalApiClient(args.socket).stream(req):
            show(line)
    except (AgentUnavailable, RequestError) as exc:
        print(f"lanner getevents: {exc}", file=sys.stderr)
        return 1
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
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

    from lanner.localapi import AgentUnavailable, LocalApiClient

    try:
        st = LocalApiClient(args.socket).status()
    except AgentUnavailable as exc:
        print(f"lanner status: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode())
        return 0
    rb, pc = st["ringbuf"], st["process_cache"]
    print(f"agent      running (pid {st['pid']}, version {st['version']}, node {st['node_name']}, "
          f"up {st['uptime_s']:.0f}s, ready in {st['ready_s']:.2f}s)")
    print(f"sensors    {', '.join(st['sensors'])}")
    print("events     " + ", ".join(f"{k} {v}" for k, v in st["events"].items()))
    print(f"ringbuf    {rb['size_bytes']} bytes, lost {rb['lost_total']}")
    print(f"cache      {pc['size']}/{pc['capacity']} processes, evictions {pc['evictions']}, misses {pc['misses']}")
    print(f"clients    {st['local_api'].get('subscribers', 0)} following, dropped {st['local_api'].get('dropped', 0)}")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from lanner.localapi import AgentUnavailable, LocalApiClient

    print(f"client  {__version__}")
    try:
        print(f"agent   {LocalApiClient(args.socket, timeout=2).request({'op': 'version'})['version']}")
    except (AgentUnavailable, OSError):
        print("agent   not running")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    _setup_logging("warning")
    from lanner.kernel.probe import main as probe_main

    return probe_main(["-o", args.output])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"agent": cmd_agent, "getevents": cmd_getevents, "status": cmd_status, "version": cmd_version,
                "probe": cmd_probe}
    if args.command is None:
        parser.print_help()
        return 2
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
