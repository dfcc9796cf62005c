"""CNI spec facts shared by the plugin executable and the agent's CNI service.

No imports at all: the plugin process imports it on every call.
"""

from __future__ import annotations


SUPPORTED_VERSIONS: tuple[str, ...] = ("0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
DEFAULT_SOCKET = "/var/run/lanner/cni.sock"
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")

# Spec error codes (SPEC.md "Error codes"); 100+ are lanner's own.
E_INCOMPATIBLE_VERSION = 1
E_UNSUPPORTED_FIELD = 2
E_UNKNOWN_CONTAINER = 3
E_INVALID_ENV = 4
E_IO = 5
E_DECODE = 6
E_INVALID_CONFIG = 7
E_TRY_AGAIN_LATER = 11
E_NOT_AVAILABLE = 50
E_NOT_AVAILABLE_DEGRADED = 51
E_ATTACHMENT_EXISTS = 100  # ADD for an interface that is already there
E_CHECK_MISMATCH = 101  # CHECK found the attachment different from prevResult
E_IPAM_EXHAUSTED = 102  # no free address left in the pod CIDR
E_INTERNAL = 103  # the agent failed for a reason not covered above

# The plugin's fast path: b"LANNER-CNI-RAW1\0" + NUL-separated CNI_* env vars + b"\0\0" + stdin, unparsed;
# the agent validates. Its reply: b"0" or b"1" (the exit code) + exactly what the plugin prints.
RAW_MAGIC = b"LANNER-CNI-RAW1\0"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def valid_id(s: str) -> bool:
    """CNI_CONTAINERID and network names: "starts alphanumeric, then alphanumeric, '_', '.', '-'"."""
    return bool(s) and s[0] not in "_.-" and all(c in _ID_CHARS for c in s)

# What each verb needs in the environment (CNI_NETNS is optional for DEL).
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "STATUS": (),
    "GC": (),
    "VERSION": (),
}
# The first config version that has the verb.
MIN_VERSION: dict[str, str] = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}


class CniError(Exception):
    """A CNI error result (code, msg, details). Not a dataclass: the plugin imports this on every call."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(code, msg, details)
        self.code = code
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg

    def to_dict(self, version: str) -> dict:
        out: dict = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K2=V2`` (CNI_ARGS) -> dict; raises CniError(4) naming the bad pair."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(E_INVALID_ENV, "invalid CNI_ARGS", f"pair {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def convert_result(result: dict, version: str) -> dict:
    """A 1.1.0 result -> the same result in ``version`` (0.4.0 adds ips[].version, 1.1.0-only fields go)."""
    out = dict(result)
    out["cniVersion"] = version
    if version_tuple(version) >= (1, 1, 0):
        return out
    out["interfaces"] = [{k: v for k, v in i.items() if k not in ("mtu", "socketPath", "pciID")}
                         for i in result.get("interfaces", [])]
    out["routes"] = [{k: v for k, v in r.items() if k in ("dst", "gw")} for r in result.get("routes", [])]
    if version_tuple(version) < (1, 0, 0):
        out["ips"] = [{"version": "6" if ":" in ip["address"] else "4", **ip} for ip in result.get("ips", [])]
    return out


def result_ips(result: dict) -> list[str]:
    """Addresses ("10.0.0.5/32") a result of any supported version lists."""
    return [str(ip.get("address", "")) for ip in result.get("ips", []) if isinstance(ip, dict)]
