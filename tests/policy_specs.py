"""TracingPolicy documents for tests: one builder, so each test writes only the part it is about."""

from __future__ import annotations

import textwrap


def policy_yaml(name: str, spec: str, kind: str = "TracingPolicy", namespace: str | None = None) -> str:
    """A whole policy document around ``spec`` (YAML of spec's fields, any common indentation)."""
    meta = f"  name: {name}\n" + (f"  namespace: {namespace}\n" if namespace else "")
    return (f"apiVersion: cilium.io/v1alpha1\nkind: {kind}\nmetadata:\n{meta}spec:\n"
            + textwrap.indent(textwrap.dedent(spec), "  "))


def openat_prefix(prefix: str, action: str = "Post") -> str:
    """spec.kprobes: sys_openat (a syscall hook) whose filename starts with ``prefix``, with one action; at
    column 0, so it can follow other spec fields written at column 0."""
    return textwrap.dedent(f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchArgs:
        - index: 1
          operator: Prefix
          values: ["{prefix}"]
        matchActions:
        - action: {action}
    """)


def openat_equal_pids(path: str, *match_pids: dict) -> str:
    """spec.kprobes: sys_openat (a syscall hook) of exactly ``path`` by the processes the matchPIDs entries
    (dicts as in the policy, e.g. {"operator": "In", "values": [pid]}) select; at column 0."""
    import json

    return textwrap.dedent(f"""
    kprobes:
    - call: sys_openat
      syscall: true
      args:
      - index: 1
        type: string
      selectors:
      - matchPIDs: {json.dumps(list(match_pids))}
        matchArgs:
        - index: 1
          operator: Equal
          values: [{json.dumps(path)}]
    """)


# spec.tracepoints: the getppid syscall tracepoint, no selectors (at two spaces: a spec fragment)
TP_HOOK = """
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_getppid
"""
