"""Node-local IPAM: one pod CIDR per node, leases keyed by the CNI attachment (containerID, ifname).

The first host address of the CIDR is the pods' gateway (configured on the node side), the network and
broadcast addresses are never handed out. Every change is persisted before it is acknowledged: the state
file is rewritten whole (tmp + fsync + rename) while holding an flock on a sibling lock file, so a crash
leaves either the old or the new state, never a torn one, and two processes never interleave (see
``_save`` for why the directory is not fsynced). A lease also carries what DEL and a restarted agent need (host veth,
endpoint id, identity, labels, pod), so nothing lives only in memory.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

from .statefile import replace_file

STATE_FILE = "ipam.json"
LOCK_FILE = "ipam.lock"
MAX_ENDPOINT_ID = 65535


class IpamError(Exception):
    pass


class IpamExhausted(IpamError):
    pass


@dataclass(frozen=True)
class Lease:
    ip: str
    container_id: str
    ifname: str
    endpoint_id: int
    network: str = ""  # the CNI network name the attachment belongs to
    netns: str = ""
    netns_inode: int = 0
    host_ifname: str = ""
    host_ifindex: int = 0
    mac: str = ""  # pod side
    identity: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    created: float = 0.0
    complete: bool = False  # set once the veth and the datapath entry exist

    @property
    def key(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)


@dataclass
class _State:
    cidr: str
    last: str  # the address handed out last; the next search starts after it (no instant reuse)
    leases: dict[str, Lease]  # by ip


class Ipam:
    def __init__(self, cidr: str, state_dir: Path) -> None:
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise IpamError(f"pod CIDR {cidr!r}: {exc}") from None
        if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 30:
            raise IpamError(f"pod CIDR {cidr!r}: must be IPv4 with a prefix of /30 or shorter")
        self.network = net
        self.gateway = str(net.network_address + 1)
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.dir / STATE_FILE
        with self._locked() as st:  # refuse a state file written for another CIDR now, not at the first ADD
            del st

    @property
    def cidr(self) -> str:
        return str(self.network)

    # ------------------------------------------------------------------ persistence
    @contextmanager
    def _locked(self) -> Iterator[_State]:
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._load()
        finally:
            os.close(fd)  # releases the lock

    def _load(self) -> _State:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return _State(self.cidr, self.gateway, {})
        except ValueError as exc:
            raise IpamError(f"{self.path}: not valid JSON ({exc}); move it away to start with no leases") from None
        if raw.get("cidr") != self.cidr:
            raise IpamError(f"{self.path}: leases are for pod CIDR {raw.get('cidr')!r}, the agent was started with "
                            f"{self.cidr!r}; use the old CIDR or move the file away")
        try:
            leases = {d["ip"]: Lease(**d) for d in raw.get("leases", [])}
        except (TypeError, KeyError) as exc:
            raise IpamError(f"{self.path}: bad lease record ({exc})") from None
        return _State(raw["cidr"], raw.get("last", self.gateway), leases)

    def _save(self, st: _State) -> None:
        """Replace the state file: tmp + fsync + rename. Atomic for every failure mode: the file's data is on
        disk before the rename, so an agent crash or a power loss leaves the old file or the new, never a
        torn one. The directory is not fsynced (it was until the ADD latency work, ~1 ms per write): that
        would only make the rename durable across a node reboot, and a reboot may only lose the latest
        renames, i.e. bring back an older but whole lease set. After a reboot every pod netns is gone; the
        runtime re-adds its pods (new attachments) and GC releases every lease not in its valid list, so an
        older lease set is reclaimed as well as the newer one would have been. An agent crash loses nothing:
        the rename is in the kernel already."""
        data = {"cidr": st.cidr, "last": st.last,
                "leases": [asdict(x) for x in sorted(st.leases.values(), key=lambda x: ipaddress.ip_address(x.ip))]}
        replace_file(self.path, json.dumps(data, indent=1).encode(),
                     self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp"))

    # ------------------------------------------------------------------ operations
    def allocate(self, container_id: str, ifname: str, **meta: object) -> Lease:
        """The attachment's lease; an existing one is returned unchanged (a retried ADD keeps its IP)."""
        with self._locked() as st:
            for lease in st.leases.values():
                if lease.key == (container_id, ifname):
                    return lease
            ip = self._next_free(st)
            used_ids = {x.endpoint_id for x in st.leases.values()}
            eid = next(i for i in range(1, MAX_ENDPOINT_ID + 1) if i not in used_ids)
            lease = Lease(ip=ip, container_id=container_id, ifname=ifname, endpoint_id=eid, created=time.time(),
                          **meta)  # type: ignore[arg-type]
            st.leases[ip] = lease
            st.last = ip
            self._save(st)
            return lease

    def _next_free(self, st: _State) -> str:
        first = int(self.network.network_address) + 2  # +1 is the gateway
        last = int(self.network.broadcast_address) - 1
        size = last - first + 1
        start = int(ipaddress.ip_address(st.last)) + 1 if st.last else first
        for i in range(size):
            cand = first + (start - first + i) % size
            text = str(ipaddress.IPv4Address(cand))
            if text not in st.leases:
                return text
        raise IpamExhausted(f"pod CIDR {self.cidr} has no free address ({size} leases)")

    def update(self, lease: Lease, **changes: object) -> Lease:
        with self._locked() as st:
            cur = st.leases.get(lease.ip)
            if cur is None or cur.key != lease.key:
                raise IpamError(f"lease {lease.ip} for {lease.container_id}/{lease.ifname} no longer exists")
            new = replace(cur, **changes)  # type: ignore[arg-type]
            st.leases[lease.ip] = new
            self._save(st)
            return new

    def get(self, container_id: str, ifname: str) -> Lease | None:
        return next((x for x in self.leases() if x.key == (container_id, ifname)), None)

    def release(self, container_id: str, ifname: str) -> Lease | None:
        with self._locked() as st:
            for ip, lease in list(st.leases.items()):
                if lease.key == (container_id, ifname):
                    del st.leases[ip]
                    self._save(st)
                    return lease
        return None

    def leases(self) -> list[Lease]:
        with self._locked() as st:
            return list(st.leases.values())

    def gc(self, valid: set[tuple[str, str]]) -> list[Lease]:
        """Release every lease whose attachment is not in ``valid``; return them."""
        with self._locked() as st:
            gone = [x for x in st.leases.values() if x.key not in valid]
            for x in gone:
                del st.leases[x.ip]
            if gone:
                self._save(st)
            return gone
