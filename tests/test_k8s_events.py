"""lanner.k8s.events: per-node Events on policies, rate-limited (the posting itself is tested against the real
API server in tests/test_k8s_agent.py)."""

from __future__ import annotations


def test_events_are_rate_limited_per_policy_and_reason() -> None:
    """The same (policy uid, reason, message) at most once per interval; a new message or reason at once;
    a forgotten (deleted) policy reports afresh. No API needed: the recorder is not started."""
    from lanner.k8s.events import EventContext, EventRecorder

    rec = EventRecorder(EventContext(api=None, node_name="n1", interval_s=60.0))
    pol = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "p", "uid": "u1"}}
    assert rec.record(pol, True, "PolicyLoadError", "boom") is True
    assert rec.record(pol, True, "PolicyLoadError", "boom") is False  # rate-limited
    assert rec.record(pol, True, "PolicyLoadError", "other error") is True  # the message changed
    assert rec.record(pol, False, "PolicySkipped", "not this node") is True  # another reason
    rec.forget("u1")
    assert rec.record(pol, True, "PolicyLoadError", "other error") is True
    assert rec.stats.limited == 1
    body = rec._queue.get_nowait()
    assert body["metadata"]["namespace"] == "default" and body["involvedObject"]["name"] == "p"
    assert body["message"] == "node n1: boom" and body["source"]["host"] == "n1" and body["type"] == "Warning"
