"""lanner-cni: the CNI 1.1 plugin executable, a thin client of the agent.

The runtime (containerd, libcni) execs it with CNI_* environment variables and the network config on
stdin. The plugin validates what the spec makes it validate (version, env vars, config), answers VERSION
itself, and forwards every other verb as one JSON request over the agent's unix socket
(``agentSocket`` in the network config, default /var/run/lanner/cni.sock). The agent does the work
(IPAM, veth, identity, datapath) and returns the result, which is printed to stdout.

Agent unreachable: ADD, CHECK and GC fail with code 11 (try again later), STATUS with 50; DEL succeeds
(best effort, as the spec asks; the agent's GC reclaims what is left).

Imports are the stdlib's json/os/re/socket/sys only, so a call costs a bare interpreter start. The
launcher that ``lanner cni install`` writes runs it with ``python -IS`` (no site-packages scan, no
editable-install finder): about half the start-up cost of the ``lanner-cni`` console script.
"""

from __future__ import annotations

import json
import os
import socket
import sys

try:
    from lanner.netdp.cni.protocol import (
        DEFAULT_SOCKET, E_DECODE, E_INCOMPATIBLE_VERSION, E_INVALID_CONFIG, E_INVALID_ENV, E_IO, E_NOT_AVAILABLE,
        E_TRY_AGAIN_LATER, E_UNSUPPORTED_FIELD, ID_RE, LATEST, MIN_VERSION, REQUIRED_ENV, SUPPORTED_VERSIONS,
        CniError, parse_cni_args, version_tuple,
    )
except ImportError:  # run by the launcher `lanner cni install` writes (python -IS, this directory on sys.path)
    from protocol import (  # type: ignore[no-redef]
        DEFAULT_SOCKET, E_DECODE, E_INCOMPATIBLE_VERSION, E_INVALID_CONFIG, E_INVALID_ENV, E_IO, E_NOT_AVAILABLE,
        E_TRY_AGAIN_LATER, E_UNSUPPORTED_FIELD, ID_RE, LATEST, MIN_VERSION, REQUIRED_ENV, SUPPORTED_VERSIONS,
        CniError, parse_cni_args, version_tuple,
    )

CONNECT_TIMEOUT_S = 2.0
REPLY_TIMEOUT_S = 120.0
MAX_REPLY = 4 << 20


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
    if not isinstance(name, str) or not ID_RE.match(name):
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
    if cid and not ID_RE.match(cid):
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


def call_agent(path: str, request: dict) -> dict:
    """One request, one reply. Raises OSError when the agent cannot be reached or hangs up."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(CONNECT_TIMEOUT_S)
        s.connect(path)
        s.settimeout(REPLY_TIMEOUT_S)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        size = 0
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
            size += len(b)
            if size > MAX_REPLY:
                raise OSError("reply larger than 4 MiB")
    finally:
        s.close()
    if not chunks:
        raise ConnectionResetError("the agent closed the connection without a reply")
    return json.loads(b"".join(chunks))


def run(command: str, env: dict[str, str], stdin: bytes) -> tuple[int, dict | None]:
    """Execute one verb; return (exit code, JSON to print or None)."""
    version = LATEST
    try:
        if command == "VERSION":
            conf = read_config(stdin) if stdin.strip() else {}
            asked = conf.get("cniVersion")
            return 0, {"cniVersion": asked if asked in SUPPORTED_VERSIONS else LATEST,
                       "supportedVersions": list(SUPPORTED_VERSIONS)}
        conf = read_config(stdin)
        if isinstance(conf.get("cniVersion"), str) and conf["cniVersion"] in SUPPORTED_VERSIONS:
            version = conf["cniVersion"]
        version = check_config(conf, command)
        request = {"command": command, **read_env(command, env), "config": conf}
        sock = conf.get("agentSocket", DEFAULT_SOCKET)
        try:
            reply = call_agent(sock, request)
        except (OSError, ValueError) as exc:
            if command == "STATUS":
                raise CniError(E_NOT_AVAILABLE, "lanner agent not available",
                               f"cannot reach the agent at {sock}: {exc}") from None
            if command == "DEL":
                sys.stderr.write(f"lanner-cni: DEL: agent at {sock} unreachable ({exc}); "
                                 "nothing released now, the agent's GC reclaims it\n")
                return 0, None
            raise CniError(E_TRY_AGAIN_LATER, "lanner agent not available, try again later",
                           f"cannot reach the agent at {sock}: {exc}") from None
        if not isinstance(reply, dict):
            raise CniError(E_IO, "bad reply from the agent", repr(reply)[:200])
        if reply.get("code", 0):
            raise CniError(int(reply["code"]), str(reply.get("msg", "")), str(reply.get("details", "")))
        return 0, reply.get("result")
    except CniError as err:
        return 1, err.to_dict(version)


def main() -> int:
    env = dict(os.environ)
    command = env.get("CNI_COMMAND", "")
    stdin = sys.stdin.buffer.read() if command else b""
    if not command:
        code, out = 1, CniError(E_INVALID_ENV, "required env variables [CNI_COMMAND] missing").to_dict(LATEST)
    elif command not in REQUIRED_ENV:
        code, out = 1, CniError(E_INVALID_ENV, "invalid CNI_COMMAND",
                                f"{command!r}; expected one of ADD, DEL, CHECK, STATUS, GC, VERSION").to_dict(LATEST)
    else:
        code, out = run(command, env, stdin)
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
