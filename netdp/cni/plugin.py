"""lanner-cni: the CNI 1.1 plugin executable, a thin client of the agent.

The runtime (containerd, libcni) execs it with CNI_* environment variables and the network config on
stdin. The agent does the work (IPAM, veth, identity, datapath) and the plugin prints its answer.

Fast path (ADD, DEL, CHECK, STATUS, GC with the agent up): the plugin imports only ``os``, ``sys`` and
``_socket``, finds ``agentSocket`` at the top level of the config with a small scanner (default
/var/run/lanner/cni.sock), and forwards the CNI_* variables and stdin unparsed; the agent validates them
exactly as the spec asks a plugin to (``validate.py``) and returns the exit code and the bytes to print.

Slow path (VERSION, no CNI_COMMAND, the agent unreachable, a config the scanner cannot read): ``json``
and ``validate.py`` are imported, the request is validated here first, then sent as JSON. Agent
unreachable: ADD, CHECK and GC fail with code 11 (try again later), STATUS with 50; DEL succeeds (best
effort, as the spec asks; the agent's GC reclaims what is left).

What a runtime execs is normally not this file but ``lanner-cni.c``, compiled by ``make cni``: it does
exactly the fast path above in C (no interpreter start-up, ~8 ms here) and hands everything else over to
this file by exec'ing the launcher ``lanner cni install`` writes next to it (``lanner-cni-py``: this
file run with ``python -IS``, no site-packages scan), with the stdin it already read as fd 0. This file
then decides as if it had been exec'd itself: it re-tries the fast path, then takes the slow path. The
one exception: the compiled client sent the request and got no usable answer (the agent may have done
part of the work, so nothing must be re-sent); it then sets ``LANNER_CNI_AFTER_SEND`` to what happened
and this file only prints the error (``handed_over``). Without ``make cni``, ``lanner cni install``
installs the launcher itself as ``lanner-cni``.
"""

from __future__ import annotations

import os
import sys

import _socket

try:
    from lanner.netdp.cni.protocol import DEFAULT_SOCKET, RAW_MAGIC
except ImportError:  # run by the launcher `lanner cni install` writes (python -IS, this directory on sys.path)
    from protocol import DEFAULT_SOCKET, RAW_MAGIC  # type: ignore[no-redef]

CONNECT_TIMEOUT_S = 2.0
REPLY_TIMEOUT_S = 120.0
MAX_REPLY = 4 << 20
FAST_COMMANDS = (b"ADD", b"DEL", b"CHECK", b"STATUS", b"GC")
NO_REPLY = "the agent closed the connection without a reply"
TOO_LARGE = "reply larger than 4 MiB"
# Set by the compiled client (lanner-cni.c) when it hands over after sending the request: "timeout",
# "no-reply", "too-large", "errno:<n>" (the agent did not answer) or "bad-reply:<hex of the first bytes>".
AFTER_SEND_ENV = b"LANNER_CNI_AFTER_SEND"


class _Unreachable(Exception):
    """The agent's socket refused or does not exist: nothing was sent."""


# ---------------------------------------------------------------------------------------------- transport
def _exchange(path: str, data: bytes) -> bytes:
    """Send ``data``, read the reply to EOF. _Unreachable when connecting fails; OSError after that."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(CONNECT_TIMEOUT_S)
        try:
            s.connect(path)
        except OSError as exc:
            raise _Unreachable(str(exc)) from None
        s.settimeout(REPLY_TIMEOUT_S)
        s.sendall(data)
        s.shutdown(_socket.SHUT_WR)
        chunks: list[bytes] = []
        size = 0
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
            size += len(b)
            if size > MAX_REPLY:
                raise OSError(TOO_LARGE)
    finally:
        s.close()
    if not chunks:
        raise ConnectionResetError(NO_REPLY)
    return b"".join(chunks)


def top_level_string(raw: bytes, key: bytes) -> str | None:
    """The value of ``key`` when it is a member of the top-level object and a plain string; None when the
    top level has no such member. ValueError when that cannot be told without a JSON parser (escapes, not
    a string, unbalanced input): the caller then takes the slow path. Nested members (e.g. a pod annotation
    named agentSocket inside runtimeConfig) are never taken."""
    want = b'"' + key + b'"'
    depth, i, n = 0, 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x22:  # a string token: find its end, honouring backslash escapes
            j = i + 1
            while True:
                j = raw.find(b'"', j)
                if j < 0:
                    raise ValueError("unterminated string")
                k = j - 1
                while raw[k] == 0x5C:
                    k -= 1
                if (j - 1 - k) % 2 == 0:
                    break
                j += 1
            token, i = raw[i:j + 1], j + 1
            if depth == 1 and token == want:
                rest = raw[i:].lstrip()
                if rest[:1] == b":":
                    val = rest[1:].lstrip()
                    end = val.find(b'"', 1)
                    if val[:1] != b'"' or end < 0 or b"\\" in val[1:end]:
                        raise ValueError("agentSocket is not a plain string")
                    return val[1:end].decode("utf-8")
            continue
        if c == 0x7B or c == 0x5B:  # { [
            depth += 1
        elif c == 0x7D or c == 0x5D:  # } ]
            depth -= 1
        i += 1
    if depth != 0:
        raise ValueError("unbalanced config")
    return None


def fast(stdin: bytes) -> int | None:
    """Forward the invocation unparsed. None: take the slow path (nothing reached the agent)."""
    try:
        sock = top_level_string(stdin, b"agentSocket")
    except ValueError:
        return None
    sock = sock or DEFAULT_SOCKET
    if not sock.startswith("/"):
        return None  # the slow path names the bad field
    env = os.environb
    frame = RAW_MAGIC + b"\0".join(k + b"=" + v for k, v in env.items() if k.startswith(b"CNI_")) + b"\0\0" + stdin
    try:
        reply = _exchange(sock, frame)
    except _Unreachable:
        return None
    except OSError as exc:  # the agent took the request and died or hung: it may have done part of it
        return no_answer(stdin, sock, str(exc))
    if reply[:1] not in (b"0", b"1"):
        return bad_reply(stdin, reply)
    out = sys.stdout.buffer
    out.write(reply[1:])
    out.flush()
    return int(reply[:1])


def no_answer(stdin: bytes, sock: str, reason: str) -> int:
    return slow_error(stdin, 11, "lanner agent not available, try again later",
                      f"the agent at {sock} did not answer: {reason}")


def bad_reply(stdin: bytes, reply: bytes) -> int:
    return slow_error(stdin, 5, "bad reply from the lanner agent", repr(reply[:200]))


def handed_over(stdin: bytes, note: bytes) -> int:
    """The compiled client sent the request and got no usable answer (``AFTER_SEND_ENV``): print the error
    this file's fast path prints in that case. Nothing is sent again."""
    try:
        sock = top_level_string(stdin, b"agentSocket") or DEFAULT_SOCKET
    except ValueError:
        sock = DEFAULT_SOCKET
    kind, _, arg = note.partition(b":")
    if kind == b"bad-reply":
        try:
            return bad_reply(stdin, bytes.fromhex(arg.decode("ascii")))
        except ValueError:
            pass
    elif kind == b"errno" and arg.isdigit():
        return no_answer(stdin, sock, str(OSError(int(arg), os.strerror(int(arg)))))
    reasons = {b"timeout": "timed out", b"no-reply": NO_REPLY, b"too-large": TOO_LARGE}
    return no_answer(stdin, sock, reasons.get(kind) or note.decode("utf-8", "replace"))


# ---------------------------------------------------------------------------------------------- slow path
def _validate():
    try:
        from lanner.netdp.cni import validate
    except ImportError:  # launcher
        import validate  # type: ignore[no-redef]
    return validate


def _protocol():
    try:
        from lanner.netdp.cni import protocol
    except ImportError:  # launcher
        import protocol  # type: ignore[no-redef]
    return protocol


def slow_error(stdin: bytes, code: int, msg: str, details: str) -> int:
    import json

    v = _validate()
    try:
        version = v.reply_version(v.read_config(stdin))
    except Exception:
        version = "1.1.0"
    sys.stdout.write(json.dumps({"cniVersion": version, "code": code, "msg": msg, "details": details}) + "\n")
    return 1


def run(command: str, env: dict[str, str], stdin: bytes) -> tuple[int, dict | None]:
    """Execute one verb here (validation first, then the agent over JSON); return (exit code, JSON to print)."""
    import json

    v, P = _validate(), _protocol()
    version = P.LATEST
    try:
        if command == "VERSION":
            conf = v.read_config(stdin) if stdin.strip() else {}
            return 0, {"cniVersion": v.reply_version(conf), "supportedVersions": list(P.SUPPORTED_VERSIONS)}
        try:
            version, request = v.request(command, env, stdin)
        except P.CniError as err:
            version = getattr(err, "version", version)
            raise
        sock = request["config"].get("agentSocket", P.DEFAULT_SOCKET)
        try:
            reply = json.loads(_exchange(sock, json.dumps(request).encode()))
        except (_Unreachable, OSError, ValueError) as exc:
            if command == "STATUS":
                raise P.CniError(P.E_NOT_AVAILABLE, "lanner agent not available",
                                 f"cannot reach the agent at {sock}: {exc}") from None
            if command == "DEL":
                sys.stderr.write(f"lanner-cni: DEL: agent at {sock} unreachable ({exc}); "
                                 "nothing released now, the agent's GC reclaims it\n")
                return 0, None
            raise P.CniError(P.E_TRY_AGAIN_LATER, "lanner agent not available, try again later",
                             f"cannot reach the agent at {sock}: {exc}") from None
        if not isinstance(reply, dict):
            raise P.CniError(P.E_IO, "bad reply from the agent", repr(reply)[:200])
        if reply.get("code", 0):
            raise P.CniError(int(reply["code"]), str(reply.get("msg", "")), str(reply.get("details", "")))
        return 0, reply.get("result")
    except P.CniError as err:
        return 1, err.to_dict(version)


def main() -> int:
    command = os.environb.get(b"CNI_COMMAND", b"")
    stdin = sys.stdin.buffer.read() if command else b""
    if command in FAST_COMMANDS:
        note = os.environb.get(AFTER_SEND_ENV)
        code = handed_over(stdin, note) if note else fast(stdin)
        if code is not None:
            return code
    import json

    P = _protocol()
    if not command:
        code, out = 1, P.CniError(P.E_INVALID_ENV, "required env variables [CNI_COMMAND] missing").to_dict(P.LATEST)
    else:
        name = os.environ["CNI_COMMAND"]
        if name not in P.REQUIRED_ENV:
            code, out = 1, P.CniError(P.E_INVALID_ENV, "invalid CNI_COMMAND",
                                      f"{name!r}; expected one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                                      ).to_dict(P.LATEST)
        else:
            code, out = run(name, dict(os.environ), stdin)
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
