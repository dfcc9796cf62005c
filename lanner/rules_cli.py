"""`lanner rules`: list the built-in rule library (ATT&CK tactic, technique, severity, live state and mode),
render a chosen rule set with a team's overlay for an agent, and enable or disable rule sets in a
running agent by tactic or severity."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lanner.rules import catalog

EPILOG = """\
examples:
  lanner rules list                                  # every rule, with its state in the running agent
  lanner rules list -o json
  lanner rules disable --tactic discovery            # detach every discovery rule in the running agent
  lanner rules enable --min-severity high            # re-attach the high and critical rules
  lanner rules render --out /etc/lanner/rules --overlay team.yaml --min-severity medium
  lanner agent --tracing-policy-dir /etc/lanner/rules   # start with that rule set

An overlay file (YAML) holds a team's edits without touching the rules:
  exceptions:                     # binaries added to the rule's matchBinaries NotIn
    lanner-cron-write: [/usr/local/bin/backup-agent]
  enforce: [lanner-miner-exec]    # add Sigkill (only rules marked lanner.io/enforce: safe)
  disable: [lanner-exec-from-tmp] # leave out
  tactics: [execution, persistence]
  minSeverity: medium
See docs/rules.md."""



def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("rules", help="the built-in rule library (MITRE ATT&CK): list, render, enable/disable",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="The built-in rules (rules/, loaded by `lanner agent` by default), each mapped "
                                   "to a MITRE ATT&CK tactic and technique, with a severity. All observe; an overlay "
                                   "switches the rules marked safe to enforce (Sigkill).")
    rs = r.add_subparsers(dest="rules_command", metavar="ACTION")
    t = rs.add_parser("list", help="rule, tactic, technique, severity, state and mode")
    t.add_argument("-o", "--output", choices=["text", "json"], default="text")
    _selection(t)
    _connection(t)
    t = rs.add_parser("render", help="write a rule set (selection + overlay) to a directory for --tracing-policy-dir")
    t.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write the rules to")
    t.add_argument("--overlay", type=Path, metavar="FILE", help="a team's exceptions/enforce/disable file (YAML)")
    t.add_argument("--enforce", action="append", default=[], metavar="RULE",
                   help="add Sigkill to this rule (repeatable; only rules marked safe)")
    _selection(t)
    for name, hlp in (("enable", "re-attach rules in the running agent"), ("disable", "detach rules in the running agent")):
        t = rs.add_parser(name, help=hlp)
        t.add_argument("names", nargs="*", metavar="RULE", help="rule names (else the --tactic/--min-severity set)")
        _selection(t)
        _connection(t)


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tactic", action="append", default=[], choices=sorted(catalog.TACTICS),
                   help="only rules of this ATT&CK tactic (repeatable)")
    p.add_argument("--min-severity", choices=catalog.SEVERITIES, help="only rules at or above this severity")
    p.add_argument("--dir", type=Path, default=None, metavar="DIR", help="rule directory (default: built-in rules)")


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server-address", metavar="ADDR", help="the agent's gRPC API (default: from its info file)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the agent")


def cmd_rules(args: argparse.Namespace) -> int:
    try:
        rules = catalog.select(catalog.load_catalog(args.dir), args.tactic, args.min_severity)
        if args.rules_command == "list":
            return _list(args, rules)
        if args.rules_command == "render":
            return _render(args, rules)
        if args.rules_command in ("enable", "disable"):
            return _configure(args, rules)
    except (ValueError, OSError) as exc:
        print(f"lanner rules: {exc}", file=sys.stderr)
        return 1
    print("lanner rules: choose an action: list, render, enable, disable (see lanner rules --help)", file=sys.stderr)
    return 2


def _live(args: argparse.Namespace) -> dict[str, object] | None:
    from lanner.client import AgentClient, resolve_address

    try:
        with AgentClient(resolve_address(args.server_address), timeout=args.timeout) as c:
            return {p.name: p for p in c.list_policies()}
    except Exception:  # noqa: BLE001 - any connection problem means: no live state to show
        return None


def rows(rules: list[catalog.Rule], live: dict[str, object] | None) -> list[dict[str, object]]:
    out = []
    for r in rules:
        p = live.get(r.name) if live is not None else None
        state = "agent not reachable" if live is None else ("not loaded" if p is None else _state(p.state))
        enforcing = p.mode == 1 if p is not None else r.enforcing  # TP_MODE_ENFORCE: enforcing actions, applied
        out.append({"rule": r.name, "tactic": r.tactic, "tactic_id": r.tactic_id, "technique": list(r.techniques),
                    "severity": r.severity, "state": state, "mode": "enforce" if enforcing else "observe",
                    "enforce_safe": r.enforce_safe, "exceptions": list(r.exceptions), "file": r.path.name,
                    **({"error": p.error} if p is not None and p.error else {})})
    return out


def _state(value: int) -> str:
    from lanner.exporter.api.gen.tetragon import sensors_pb2

    try:
        return sensors_pb2.TracingPolicyState.Name(value).removeprefix("TP_STATE_").lower()
    except ValueError:
        return str(value)


def _list(args: argparse.Namespace, rules: list[catalog.Rule]) -> int:
    table = rows(rules, _live(args))
    if args.output == "json":
        print(json.dumps(table, indent=2))
        return 0
    cols = ("rule", "tactic", "technique", "severity", "state", "mode")
    cells = [[", ".join(x[c]) if isinstance(x[c], list) else str(x[c]) for c in cols] for x in table]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def _render(args: argparse.Namespace, rules: list[catalog.Rule]) -> int:
    overlay = catalog.load_overlay(args.overlay, rules) if args.overlay else catalog.Overlay()
    if args.enforce:
        extra = catalog.Overlay(enforce=tuple(args.enforce))
        for name in args.enforce:
            match = [r for r in rules if r.name == name]
            if not match or not match[0].enforce_safe:
                raise ValueError(f"--enforce {name}: no such rule marked safe to enforce (lanner rules list -o json: "
                                 "enforce_safe)")
        overlay = catalog.Overlay(overlay.exceptions, overlay.enforce + extra.enforce, overlay.disable,
                                  overlay.tactics, overlay.min_severity)
    written = catalog.render(rules, overlay, args.out)
    print(f"{len(written)} rules written to {args.out}; start the agent with --tracing-policy-dir {args.out}")
    return 0


def _configure(args: argparse.Namespace, rules: list[catalog.Rule]) -> int:
    from lanner.client import AgentClient, resolve_address

    chosen = catalog.select(rules, names=args.names) if args.names else rules
    missing = set(args.names) - {r.name for r in chosen}
    if missing:
        raise ValueError(f"no rule named {', '.join(sorted(missing))} (see 'lanner rules list')")
    enable = args.rules_command == "enable"
    with AgentClient(resolve_address(args.server_address), timeout=args.timeout) as c:
        loaded = {p.name for p in c.list_policies()}
        done = [r.name for r in chosen if r.name in loaded]
        for name in done:
            c.configure_policy(name, enable=enable)
    print(f"{len(done)} rules {'enabled' if enable else 'disabled'}"
          + (f" ({len(chosen) - len(done)} not loaded in the agent)" if len(done) < len(chosen) else ""))
    return 0


# ----------------------------------------------------------------------------------------- lanner agent flags
def add_agent_flags(g: argparse._ArgumentGroup) -> None:
    """`lanner agent` flags choosing the rule set loaded from --tracing-policy-dir (the built-in rules by default)."""
    g.add_argument("--rules-tactic", action="append", default=[], choices=sorted(catalog.TACTICS), metavar="TACTIC",
                   help="load only the rules of this ATT&CK tactic (repeatable; see 'lanner rules list'): "
                        + ", ".join(catalog.TACTICS))
    g.add_argument("--rules-min-severity", choices=catalog.SEVERITIES, metavar="SEVERITY",
                   help="load only the rules at or above this severity: " + ", ".join(catalog.SEVERITIES))
    g.add_argument("--rules-overlay", type=Path, metavar="FILE",
                   help="merge a team's overlay (exceptions, enforce, disable, tactics, minSeverity) into the "
                        "rules; see docs/rules.md")
    g.add_argument("--rules-enforce", action="append", default=[], metavar="RULE",
                   help="switch this rule to enforce (Sigkill; only rules marked lanner.io/enforce: safe; "
                        "repeatable)")


def agent_rules_dir(args: argparse.Namespace, directory: Path | None) -> Path | None:
    """``directory`` itself, or, when a --rules-* flag is given, a private rendering of its rules with the
    selection and overlay applied (removed when the agent exits). Exits with the reason on a bad flag/file."""
    wanted = args.rules_tactic or args.rules_min_severity or args.rules_overlay or args.rules_enforce
    if not wanted:
        return directory
    import atexit
    import shutil
    import tempfile

    try:
        if directory is None:
            raise ValueError("the --rules-* flags choose rules from --tracing-policy-dir, which is empty")
        rules = catalog.load_catalog(directory)
        overlay = catalog.load_overlay(args.rules_overlay, rules) if args.rules_overlay else catalog.Overlay()
        for name in args.rules_enforce:
            if not any(r.name == name and r.enforce_safe for r in rules):
                raise ValueError(f"--rules-enforce {name}: no such rule marked safe to enforce")
        overlay = catalog.Overlay(overlay.exceptions, overlay.enforce + tuple(args.rules_enforce), overlay.disable,
                                  tuple(args.rules_tactic) or overlay.tactics,
                                  args.rules_min_severity or overlay.min_severity)
        out = Path(tempfile.mkdtemp(prefix="lanner-rules-"))
        atexit.register(shutil.rmtree, out, True)
        catalog.render(rules, overlay, out)
        return out
    except (ValueError, OSError) as exc:
        raise SystemExit(f"lanner agent: {exc}") from None
