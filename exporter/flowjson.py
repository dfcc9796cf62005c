"""Flow events as export JSON lines: one ``{"flow": {...}, "node_name", "time"}`` object per line, as Tetragon
writes its events (netdp.flows decodes the datapath's records into the dicts)."""

from __future__ import annotations

import time

import orjson

from .encoder import KtimeClock


def flow_lines(flows: list[dict], node_name: str, clock: KtimeClock) -> list[bytes]:
    t = clock.rfc3339(time.monotonic_ns())
    return [orjson.dumps({**(f if "flow" in f else {"flow": f}), "node_name": node_name, "time": f.get("time", t)})
            for f in flows]
