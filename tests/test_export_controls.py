"""Export allow/deny lists, field filters, redaction and the export rate limit (Tetragon semantics)."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from lanner.exporter.fieldfilters import FieldFilterSet, Redactor
from lanner.exporter.filters import FilterError, FilterSet, parse_filter_lines
from lanner.exporter.pipeline import OutEvent
from lanner.exporter.ratelimit import ExportRateLimiter
from lanner.process_cache import Process
from lanner.sensors.process import Creds
from tests.conftest import execs, exits, start_agent


def _p(pid: int, binary: str, args=(), caps: int = 0, pod=None) -> Process:
    p = Process(key=(pid, 1), exec_id=f"id{pid}", parent_key=None, parent_exec_id="", pid=pid, tid=pid, nspid=pid,
                binary=binary, args=tuple(args), cwd="/", flags=("execve",), start_ns=1,
                creds=Creds(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, caps, caps, 0), ns=None, cgroup_id=0)
    return p


def ev(kind: str, pid: int, binary: str, args=(), parent_binary: str | None = None, caps: int = 0) -> OutEvent:
    parent = _p(1, parent_binary) if parent_binary else None
    return OutEvent(kind, _p(pid, binary, args, caps), parent, b"{}")


def test_lines_are_ored_keys_anded_and_deny_wins():
    allow = parse_filter_lines('{"event_set":["PROCESS_EXEC"],"binary_regex":["curl$"]}\n'
                               '{"pid":[42]}\n', "allow")
    deny = parse_filter_lines('{"arguments_regex":["secret"]}', "deny")
    fs = FilterSet(allow, deny)
    assert fs.admits(ev("process_exec", 7, "/usr/bin/curl"))  # line 1: both keys match
    assert not fs.admits(ev("process_exit", 7, "/usr/bin/curl"))  # line 1: event_set fails (AND)
    assert fs.admits(ev("process_exit", 42, "/bin/sh"))  # line 2 (OR)
    assert not fs.admits(ev("process_exec", 7, "/usr/bin/wget"))
    assert not fs.admits(ev("process_exec", 7, "/usr/bin/curl", ["--secret"]))  # deny wins
    assert FilterSet((), deny).admits(ev("process_exit", 3, "/x"))  # empty allow list admits all


def test_more_filter_fields():
    fs = FilterSet(parse_filter_lines('{"parent_binary_regex":["^/bin/bash$"]}', "a"), ())
    assert fs.admits(ev("process_exec", 5, "/bin/ls", parent_binary="/bin/bash"))
    assert not fs.admits(ev("process_exec", 5, "/bin/ls", parent_binary="/bin/zsh"))
    caps = FilterSet(parse_filter_lines('{"capabilities":{"effective":{"any":["CAP_SYS_ADMIN"]}}}', "a"), ())
    assert caps.admits(ev("process_exec", 5, "/x", caps=1 << 21)) and not caps.admits(ev("process_exec", 5, "/x"))
    host = FilterSet(parse_filter_lines('{"namespace":[""]}', "a"), ())
    assert host.admits(ev("process_exec", 5, "/x"))  # "" is the host
    labels = FilterSet(parse_filter_lines('{"labels":["app=web"]}', "a"), ())
    assert not labels.admits(ev("process_exec", 5, "/x"))  # host processes have no pod labels


@pytest.mark.parametrize("line,msg", [
    ('{"binary_regex":["("]}', "f:1.binary_regex[0]: '(' is not a valid regular expression"),
    ('{"event_set":["PROCESS_NOPE"]}', "f:1.event_set[0]: unknown event type 'PROCESS_NOPE'"),
    ('{"bogus":1}', "f:1: unknown filter field(s) bogus"),
    ('{"pid":["x"]}', "f:1.pid: expected a list of non-negative integers"),
    ('not json', "f:1: not valid JSON"),
])
def test_bad_filters_name_the_field(line, msg):
    with pytest.raises(FilterError) as ei:
        parse_filter_lines(line, "f")
    assert str(ei.value).startswith(msg)


def test_field_filters_include_then_exclude():
    ff = FieldFilterSet.parse_lines(
        '{"fields":"process.binary,process.pid,parent","event_set":["PROCESS_EXEC"],"action":"INCLUDE"}\n'
        '{"fields":"parent.arguments","action":"EXCLUDE"}', "ff")
    event = {"process_exec": {"process": {"binary": "/bin/ls", "pid": 3, "cwd": "/"},
                              "parent": {"binary": "/bin/sh", "arguments": "-c ls"}}, "node_name": "n", "time": "t"}
    out = ff.apply("process_exec", event)
    assert out == {"process_exec": {"process": {"binary": "/bin/ls", "pid": 3}, "parent": {"binary": "/bin/sh"}},
                   "node_name": "n", "time": "t"}
    exit_ev = {"process_exit": {"process": {"binary": "/bin/ls", "cwd": "/"}, "parent": {"arguments": "x"}}}
    assert ff.apply("process_exit", exit_ev) == {"process_exit": {"process": {"binary": "/bin/ls", "cwd": "/"},
                                                                  "parent": {}}}
    inv = FieldFilterSet.parse_lines('{"fields":"process","event_set":["PROCESS_EXIT"],"invert_event_set":true,'
                                     '"action":"INCLUDE"}', "ff")
    assert inv.apply("process_exec", {"process_exec": {"process": {"a": 1}, "parent": {}}}) == \
        {"process_exec": {"process": {"a": 1}}}
    with pytest.raises(FilterError, match=r"ff:1.action: 'KEEP' is not INCLUDE or EXCLUDE"):
        FieldFilterSet.parse_lines('{"fields":"a","action":"KEEP"}', "ff")


def test_redaction_replaces_capture_groups():
    r = Redactor.parse_lines('{"binary_regex":["mysql$"],"redact":["--password[= ](\\\\S+)","(?:^| )-p(\\\\S+)"]}', "rf")
    assert r.arguments("/usr/bin/mysql", "-u root --password=hunter2 -psecret db") == \
        "-u root --password=***** -p***** db"
    assert r.arguments("/usr/bin/psql", "--password=x") == "--password=x"
    with pytest.raises(FilterError, match="no capture group"):
        Redactor.parse_lines('{"redact":["--password"]}', "rf")


def test_rate_limiter_counts_exactly():
    now = [0.0]
    rl = ExportRateLimiter(60, clock=lambda: now[0])  # 1 per second, burst 60
    assert rl.admit(100) == 60 and rl.dropped_total == 40
    now[0] += 10
    assert rl.admit(20) == 10
    assert rl.take_report() == 50 and rl.take_report() == 0
    assert ExportRateLimiter(0).admit(5) == 0


@pytest.mark.bpf
def test_agent_export_lists_redaction_and_field_filters(tmp_path):
    a = start_agent(
        tmp_path,
        "--export-allowlist", '{"binary_regex":["^/bin/(true|echo)$"]}',
        "--export-denylist", '{"event_set":["PROCESS_EXIT"],"binary_regex":["echo"]}',
        "--redaction-filters", '{"redact":["token=(\\\\S+)"]}',
        "--field-filters", '{"fields":"process.binary,process.arguments,parent.binary,status,signal","action":"INCLUDE"}')
    try:
        subprocess.run(["/bin/true", "token=abc", "keep"])
        subprocess.run(["/bin/echo", "shown-exec-only"], stdout=subprocess.DEVNULL)
        subprocess.run(["/bin/ls", "/"], stdout=subprocess.DEVNULL)
        a.wait_for(lambda e: exits(e, binary="/bin/true") and execs(e, binary="/bin/echo"), what="filtered events")
        time.sleep(0.3)
        evs = a.events()
    finally:
        a.stop()
    assert {e["process_exec" if "process_exec" in e else "process_exit"]["process"]["binary"] for e in evs} <= \
        {"/bin/true", "/bin/echo"}  # allowlist
    assert not exits(evs, binary="/bin/echo")  # denylist wins
    # the test's own exec (other work on the machine may run /bin/true too)
    mine = [e for e in execs(evs, binary="/bin/true") if e["process"].get("arguments", "").endswith(" keep")]
    assert len(mine) == 1, execs(evs, binary="/bin/true")
    t = mine[0]
    assert t["process"] == {"binary": "/bin/true", "arguments": "token=***** keep"}  # redacted, fields filtered
    assert set(t["parent"]) == {"binary"}


@pytest.mark.bpf
def test_agent_rate_limit_reports_exact_drops(tmp_path):
    a = start_agent(tmp_path, "--export-rate-limit", "20")
    try:
        subprocess.run(["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do /bin/true; done"])
        deadline = time.monotonic() + 10
        while a.status()["export"]["rate_limited"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # one housekeeping tick writes the rate_limit_info event
        st = a.status()
    finally:
        a.stop()
    evs = a.events()
    info = [e for e in evs if "rate_limit_info" in e]
    regular = [e for e in evs if "rate_limit_info" not in e]
    dropped = sum(int(e["rate_limit_info"]["number_of_dropped_process_events"]) for e in info)
    assert len(regular) == 20  # the burst allowance of one minute
    assert info and int(info[0]["rate_limit_info"]["number_of_dropped_process_events"]) >= 20
    assert dropped >= st["export"]["rate_limited"] >= 20
    # every event the agent produced is either exported or counted in a rate_limit_info event, exactly
    m = re.search(r"events: (\d+) produced, (\d+) exported, \d+ filtered out, (\d+) rate-limited",
                  a.stderr_path.read_text())
    assert m, "agent did not log its final export counts"
    produced, exported, limited = map(int, m.groups())
    assert exported == len(regular) + len(info) and limited == dropped and produced == len(regular) + dropped
