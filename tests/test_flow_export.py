"""Flow events (netdp) go through the same export filters and compact view as security events."""

from __future__ import annotations

import json
import subprocess
import sys

FLOW = {"flow": {"node_name": "n1", "time": "2026-11-25T23:00:00Z", "verdict": "DROPPED", "reason": "policy-denied",
                 "protocol": "TCP", "direction": "ingress",
                 "src": {"ip": "10.1.0.2", "port": 40000, "identity": 300},
                 "dst": {"ip": "10.1.0.3", "port": 80, "identity": 301, "pod": {"namespace": "default", "name": "web"}}},
        "node_name": "n1", "time": "2026-11-25T23:00:00Z"}
EXEC = {"process_exec": {"process": {"binary": "/bin/true", "pid": 1}}, "node_name": "n1",
        "time": "2026-11-25T23:00:01Z"}


def getevents(*args: str) -> str:
    stdin = "\n".join(json.dumps(e) for e in (FLOW, EXEC)) + "\n"
    r = subprocess.run([sys.executable, "-m", "lanner", "getevents", *args], input=stdin, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_flow_events_are_a_known_event_type_for_filters():
    only_flows = getevents("-o", "compact", "--event-types", "FLOW")
    assert only_flows.splitlines() == [
        "⛔ drop    n1 10.1.0.2:40000 (id 300) -> default/web 10.1.0.3:80 (id 301) TCP ingress policy-denied"]
    no_flows = getevents("-o", "json", "--event-types", "PROCESS_EXEC")
    assert [list(json.loads(line)) for line in no_flows.splitlines()] == [["process_exec", "node_name", "time"]]
