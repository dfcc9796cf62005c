"""Symbolic names a policy may use in values, with the numbers the kernel uses for them.

These are Linux UAPI constants (``include/uapi/linux/in.h``, ``socket.h``, ``tcp_states``,
``capability.h``, ``stat.h``). They are stable kernel ABI, so a table is both the simplest and the
most honest representation; keeping them here lets the validator reject a typo such as
``IPPROTO_UPD`` with a precise message instead of a load-time failure.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

IP_PROTOCOLS: Mapping[str, int] = MappingProxyType({
    "IPPROTO_IP": 0, "IPPROTO_ICMP": 1, "IPPROTO_IGMP": 2, "IPPROTO_IPIP": 4, "IPPROTO_TCP": 6,
    "IPPROTO_EGP": 8, "IPPROTO_PUP": 12, "IPPROTO_UDP": 17, "IPPROTO_IDP": 22, "IPPROTO_TP": 29,
    "IPPROTO_DCCP": 33, "IPPROTO_IPV6": 41, "IPPROTO_RSVP": 46, "IPPROTO_GRE": 47, "IPPROTO_ESP": 50,
    "IPPROTO_AH": 51, "IPPROTO_ICMPV6": 58, "IPPROTO_MTP": 92, "IPPROTO_BEETPH": 94,
    "IPPROTO_ENCAP": 98, "IPPROTO_PIM": 103, "IPPROTO_COMP": 108, "IPPROTO_L2TP": 115,
    "IPPROTO_SCTP": 132, "IPPROTO_UDPLITE": 136, "IPPROTO_MPLS": 137, "IPPROTO_ETHERNET": 143,
    "IPPROTO_RAW": 255, "IPPROTO_MPTCP": 262,
})

ADDRESS_FAMILIES: Mapping[str, int] = MappingProxyType({
    "AF_UNSPEC": 0, "AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_AX25": 3, "AF_IPX": 4,
    "AF_APPLETALK": 5, "AF_NETROM": 6, "AF_BRIDGE": 7, "AF_ATMPVC": 8, "AF_X25": 9, "AF_INET6": 10,
    "AF_ROSE": 11, "AF_DECnet": 12, "AF_NETBEUI": 13, "AF_SECURITY": 14, "AF_KEY": 15,
    "AF_NETLINK": 16, "AF_ROUTE": 16, "AF_PACKET": 17, "AF_ASH": 18, "AF_ECONET": 19,
    "AF_ATMSVC": 20, "AF_RDS": 21, "AF_SNA": 22, "AF_IRDA": 23, "AF_PPPOX": 24, "AF_WANPIPE": 25,
    "AF_LLC": 26, "AF_IB": 27, "AF_MPLS": 28, "AF_CAN": 29, "AF_TIPC": 30, "AF_BLUETOOTH": 31,
    "AF_IUCV": 32, "AF_RXRPC": 33, "AF_ISDN": 34, "AF_PHONET": 35, "AF_IEEE802154": 36,
    "AF_CAIF": 37, "AF_ALG": 38, "AF_NFC": 39, "AF_VSOCK": 40, "AF_KCM": 41, "AF_QIPCRTR": 42,
    "AF_SMC": 43, "AF_XDP": 44, "AF_MCTP": 45,
})

TCP_STATES: Mapping[str, int] = MappingProxyType({
    "TCP_ESTABLISHED": 1, "TCP_SYN_SENT": 2, "TCP_SYN_RECV": 3, "TCP_FIN_WAIT1": 4,
    "TCP_FIN_WAIT2": 5, "TCP_TIME_WAIT": 6, "TCP_CLOSE": 7, "TCP_CLOSE_WAIT": 8, "TCP_LAST_ACK": 9,
    "TCP_LISTEN": 10, "TCP_CLOSING": 11, "TCP_NEW_SYN_RECV": 12, "TCP_BOUND_INACTIVE": 13,
})

# Capability name -> bit number.
CAPABILITIES: Mapping[str, int] = MappingProxyType({name: bit for bit, name in enumerate((
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
))})

# FileType operator values -> S_IFMT bits (both spellings Tetragon accepts).
FILE_TYPES: Mapping[str, int] = MappingProxyType({
    "reg": 0o100000, "regular": 0o100000, "dir": 0o040000, "lnk": 0o120000, "link": 0o120000,
    "sock": 0o140000, "socket": 0o140000, "blk": 0o060000, "block": 0o060000,
    "chr": 0o020000, "char": 0o020000, "fifo": 0o010000, "pipe": 0o010000,
})

MAX_SIGNAL = 64  # SIGRTMAX on Linux


# Tetragon's KprobeAction numbers (api/v1/tetragon: the action an event reports), by the policy's action name
ACTION_NUMBERS: Mapping[str, int] = MappingProxyType({
    "Post": 1, "Sigkill": 3, "Override": 5, "GetUrl": 7, "DnsLookup": 8, "NoPost": 9, "Signal": 10, "TrackSock": 11,
    "UntrackSock": 12, "NotifyEnforcer": 13, "CleanupEnforcerNotification": 14, "Set": 15,
})
