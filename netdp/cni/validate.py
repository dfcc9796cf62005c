"""What the CNI spec makes a plugin check before acting: config version and fields, env vars.

Used by the plugin's slow path (agent unreachable, VERSION) and by the agent for the plugin's fast
path, so both answer a bad request the same way.
"""

from __future__ import annotations

import json

try:
    from lanner.netdp.cni.protocol import (
        DEFAULT_SOCKET, E_DECODE, E_INCOMPATIBLE_VERSION, E_INVALID_CONFIG, E_INVALID_ENV, E_UNSUPPORTED_FIELD,
        LATEST, MIN_VERSION, RAW_MAGIC, REQUIRED_ENV, SUPPORTED_VERSIONS, CniError, parse_cni_args, valid_id,
        version_tuple,
    )
except ImportError:  # run by the plugin launcher (python -IS, this directory on sys.path)
    from protocol import (  # type: ignore[no-redef]
        DEFAULT_SOCKET, E_DECODE, E_INCOMPATIBLE_VERSION, E_INVALID_CONFIG, E_INVALID_ENV, E_UNSUPPORTED_FIELD,
        LATEST, MIN_VERSION, RAW_MAGIC, REQUIRED_ENV, SUPPORTED_VERSIONS, CniError, parse_cni_args, valid_id,
        version_tuple,
    )


def _versions_text() -> str:
    return "[" + " ".join(f'"{v}"' for v in SUPPORTED_VERSIONS) + "]"


def read_config(raw: bytes) -> dict:
    try:
        conf = json.loads(raw or b"{}")
    except ValueError as exc:
        raise CniError(E_DECODE, "decoding error", f"network config on stdin is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise CniError(E_DECODE, "decoding error", "network config on stdin must be a JSON object")
    return conf


def reply_version(conf: dict) -> str:
    """The version to answer in: the config's when it is one we speak, else the latest."""
    v = conf.get("cniVersion")
    return v if isinstance(v, str) and v in SUPPORTED_VERSIONS else LATEST


def check_config(conf: dict, command: str) -> str:
    """Validate the network config for ``command``; return its cniVersion."""
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(E_INVALID_CONFIG, "invalid network config", "cniVersion is missing or not a string")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(E_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'config is "{version}", plugin supports {_versions_text()}')
    need = MIN_VERSION.get(command)
    if need and version_tuple(version) < version_tuple(need):
        raise CniError(E_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'config version "{version}" does not allow {command} (needs {need} or later)')
    name = conf.get("name")
    if not isinstance(name, str) or not valid_id(name):
        raise CniError(E_INVALID_CONFIG, "invalid network config",
                       f"name {name!r} must start alphanumeric, then alphanumeric, '_', '.' or '-'")
    sock = conf.get("agentSocket", DEFAULT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise CniError(E_INVALID_CONFIG, "invalid network config", f"agentSocket {sock!r} must be an absolute path")
    mtu = conf.get("mtu", 1500)
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
        raise CniError(E_INVALID_CONFIG, "invalid network config", f"mtu {mtu!r} must be an integer in 68..65535")
    if "ipam" in conf and conf["ipam"] not in ({}, None):
        ipam_type = conf["ipam"].get("type") if isinstance(conf["ipam"], dict) else conf["ipam"]
        raise CniError(E_UNSUPPORTED_FIELD, f"unsupported field ipam.type={ipam_type!r}",
                       "lanner-cni allocates from the agent's --pod-cidr; remove the ipam section")
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(E_INVALID_CONFIG, "invalid network config", "prevResult must be an object")
    if command == "CHECK" and not prev:
        raise CniError(E_INVALID_CONFIG, "invalid network config", "CHECK needs prevResult")
    return version


def read_env(command: str, env: dict[str, str]) -> dict:
    missing = [k for k in REQUIRED_ENV[command] if not env.get(k)]
    if missing:
        raise CniError(E_INVALID_ENV, f"required env variables [{' '.join(missing)}] missing")
    cid = env.get("CNI_CONTAINERID", "")
    if cid and not valid_id(cid):
        raise CniError(E_INVALID_ENV, "invalid CNI_CONTAINERID",
                       f"{cid!r} must start alphanumeric, then alphanumeric, '_', '.' or '-'")
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (len(ifname) > 15 or ifname in (".", "..") or any(c in ifname for c in "/: \t\n")):
        raise CniError(E_INVALID_ENV, "invalid CNI_IFNAME", f"{ifname!r} is not a valid interface name")
    netns = env.get("CNI_NETNS", "")
    if netns and not netns.startswith("/"):
        raise CniError(E_INVALID_ENV, "invalid CNI_NETNS", f"{netns!r} must be an absolute path")
    return {"containerID": cid, "ifname": ifname, "netns": netns,
            "args": parse_cni_args(env.get("CNI_ARGS", "")), "path": env.get("CNI_PATH", "")}


def request(command: str, env: dict[str, str], stdin: bytes) -> tuple[str, dict]:
    """Validate one invocation; return (reply version, the service request). Raises CniError, whose reply
    version is then ``reply_version`` of the config when it could be read (attribute ``version``)."""
    version = LATEST
    try:
        if command not in REQUIRED_ENV or command == "VERSION":
            raise CniError(E_INVALID_ENV, "invalid CNI_COMMAND",
                           f"{command!r}; expected one of ADD, DEL, CHECK, STATUS, GC, VERSION")
        conf = read_config(stdin)
        version = reply_version(conf)
        check_config(conf, command)
        return version, {"command": command, **read_env(command, env), "config": conf}
    except CniError as err:
        err.version = version  # type: ignore[attr-defined]
        raise


def parse_raw(frame: bytes) -> tuple[str, dict[str, str], bytes]:
    """The plugin's fast-path frame -> (CNI_COMMAND, CNI_* env, stdin)."""
    if not frame.startswith(RAW_MAGIC):
        raise CniError(E_DECODE, "decoding error", "not a lanner-cni request")
    header, sep, stdin = frame[len(RAW_MAGIC):].partition(b"\0\0")
    if not sep:
        raise CniError(E_DECODE, "decoding error", "request frame has no end of environment")
    env: dict[str, str] = {}
    for item in header.split(b"\0"):
        if item:
            k, _, v = item.decode("utf-8", "replace").partition("=")
            env[k] = v
    return env.get("CNI_COMMAND", ""), env, stdin
