"""One-line human rendering of events, as ``tetra getevents -o compact`` prints them.

``🚀 process <ns/pod or node> <binary> <arguments>`` and ``💥 exit    ... <signal or status>``. The label
is padded to 7 characters. On a terminal the parts are coloured: label blue, source green, binary
magenta, details cyan, status red. Works on decoded JSON dicts, so it renders a live stream and JSON
read from stdin alike. Datapath flow events (``{"flow": ...}``, netdp) render as ``🔀 flow`` or ``⛔ drop``
with both ends (pod, address, identity), protocol, direction and reason.
"""

from __future__ import annotations

from dataclasses import dataclass

_RESET = "\x1b[0m"
_COLORS = {"blue": "\x1b[34m", "green": "\x1b[32m", "magenta": "\x1b[35m", "cyan": "\x1b[36m", "red": "\x1b[31m"}


@dataclass(frozen=True)
class CompactFormatter:
    color: bool = False
    timestamps: bool = False

    def _c(self, name: str, text: str) -> str:
        return f"{_COLORS[name]}{text}{_RESET}" if self.color and text else text

    def _source(self, event: dict, process: dict) -> str:
        pod = process.get("pod")
        if pod and pod.get("name"):
            return f"{pod.get('namespace', '')}/{pod['name']}"
        return event.get("node_name", "")

    def _line(self, emoji: str, label: str, event: dict, process: dict, details: list[str]) -> str:
        parts = [self._c("blue", f"{emoji} {label:<7}"), self._c("green", self._source(event, process)),
                 self._c("magenta", process.get("binary", ""))]
        parts += [d for d in details if d]
        line = " ".join(p for p in parts if p)
        if self.timestamps and event.get("time"):
            line = f"{event['time']} {line}"
        return line

    def format(self, event: dict) -> str | None:
        """The compact line for an event, or None for event kinds without a compact form."""
        if "process_exec" in event:
            body = event["process_exec"]
            proc = body.get("process", {})
            return self._line("🚀", "process", event, proc, [self._c("cyan", proc.get("arguments", ""))])
        if "process_exit" in event:
            body = event["process_exit"]
            proc = body.get("process", {})
            status = body.get("signal") or str(body.get("status", 0))
            return self._line("💥", "exit", event, proc,
                              [self._c("cyan", proc.get("arguments", "")), self._c("red", status)])
        if "flow" in event:
            return self._flow(event["flow"])
        return None

    # ---- network flows (netdp): "🔀 flow    node a/b 10.0.0.2:40000 -> c/d 10.0.0.3:80 TCP SYN egress policy-allowed"
    @staticmethod
    def _peer(p: dict) -> str:
        pod = p.get("pod")
        where = f"{p.get('ip', '')}:{p.get('port', 0)}" if p.get("port") else p.get("ip", "")
        name = f"{pod.get('namespace', '')}/{pod.get('name', '')} " if pod else ""
        return f"{name}{where} (id {p.get('identity', 0)})"

    def _flow(self, flow: dict) -> str:
        dropped = flow.get("verdict") == "DROPPED"
        emoji, label = ("⛔", "drop") if dropped else ("🔀", "flow")
        l4 = " ".join(x for x in (flow.get("protocol", ""), flow.get("tcp_flags", "")) if x)
        parts = [self._c("blue", f"{emoji} {label:<7}"), self._c("green", flow.get("node_name", "")),
                 self._c("magenta", f"{self._peer(flow.get('src', {}))} -> {self._peer(flow.get('dst', {}))}"),
                 self._c("cyan", f"{l4} {flow.get('direction', '')}".strip()),
                 self._c("red" if dropped else "cyan", flow.get("reason", "")),
                 self._c("cyan", flow.get("policy", ""))]
        line = " ".join(p for p in parts if p)
        if self.timestamps and flow.get("time"):
            line = f"{flow['time']} {line}"
        return line
