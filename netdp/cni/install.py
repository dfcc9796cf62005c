"""``lanner cni install``: put the network config and the plugin where a runtime looks for them.

Writes ``<conf-dir>/10-lanner.conflist`` (from the shipped example, with the agent socket and MTU given)
atomically, and ``<bin-dir>/lanner-cni``: a three-line launcher that runs this installation's plugin
with ``python -IS`` (fast start), or with ``--symlink`` a link to the ``lanner-cni`` console script.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

CONFLIST_NAME = "10-lanner.conflist"
EXAMPLE = Path(__file__).with_name(CONFLIST_NAME)  # the same content, for readers (a test keeps them equal)
PLUGIN_NAME = "lanner-cni"
LAUNCHER_NAME = "lanner-cni-py"  # the compiled client's slow path, installed next to it
NATIVE = Path(__file__).with_name("bin") / PLUGIN_NAME  # `make cni` builds it from lanner-cni.c
DEFAULT_SOCKET = "/var/run/lanner/cni.sock"


def default_conflist() -> dict:
    return {"cniVersion": "1.1.0", "cniVersions": ["0.4.0", "1.0.0", "1.1.0"], "name": "lanner",
            "plugins": [{"type": PLUGIN_NAME, "agentSocket": DEFAULT_SOCKET, "mtu": 1500}]}


@dataclass(frozen=True)
class InstallResult:
    conflist: Path
    plugin_link: Path
    plugin_target: Path


def find_plugin() -> Path:
    """The lanner-cni executable next to the running interpreter (venv), else on PATH."""
    beside = Path(sys.executable).with_name(PLUGIN_NAME)
    if beside.exists():
        return beside
    found = shutil.which(PLUGIN_NAME)
    if found is None:
        raise FileNotFoundError(f"{PLUGIN_NAME} not found next to {sys.executable} nor on PATH; "
                                "install the lanner package (it provides the console script)")
    return Path(found)


def conflist(agent_socket: str | None = None, mtu: int | None = None) -> dict:
    conf = default_conflist()
    plugin = conf["plugins"][0]
    if agent_socket is not None:
        plugin["agentSocket"] = agent_socket
    if mtu is not None:
        plugin["mtu"] = mtu
    return conf


LAUNCHER = """#!{python} -IS
# lanner-cni, written by `lanner cni install`. python -IS: isolated, no site import (the plugin needs the
# stdlib only), which halves the start-up of each call compared with the console script.
import sys
sys.path.insert(0, {plugin_dir!r})
from plugin import main
sys.exit(main())
"""


def launcher_text() -> str:
    return LAUNCHER.format(python=sys.executable, plugin_dir=str(Path(__file__).resolve().parent))


def install(conf_dir: Path, bin_dir: Path, agent_socket: str | None = None, mtu: int | None = None,
            symlink: bool = False) -> InstallResult:
    """Write the conflist and the plugin: a fast launcher script, or (``symlink``) a link to the console script."""
    for flag, d in (("--conf-dir", conf_dir), ("--bin-dir", bin_dir)):
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(f"{flag} {d}: exists and is not a directory")
    if agent_socket is not None and not agent_socket.startswith("/"):
        raise ValueError(f"--agent-socket {agent_socket!r}: must be an absolute path")
    if mtu is not None and not 68 <= mtu <= 65535:
        raise ValueError(f"--mtu {mtu}: must be in 68..65535")
    target = find_plugin().resolve() if symlink else Path(__file__).with_name("plugin.py").resolve()
    conf = conflist(agent_socket, mtu)  # everything validated before anything is written
    conf_dir.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    dest = conf_dir / CONFLIST_NAME
    tmp = dest.with_name(f".{CONFLIST_NAME}.tmp")
    tmp.write_text(json.dumps(conf, indent=2) + "\n")
    os.replace(tmp, dest)
    link = bin_dir / PLUGIN_NAME
    tmp_link = bin_dir / f".{PLUGIN_NAME}.tmp"
    tmp_link.unlink(missing_ok=True)
    if symlink:
        tmp_link.symlink_to(target)
    else:
        tmp_link.write_text(launcher_text())
        tmp_link.chmod(0o755)
    os.replace(tmp_link, link)
    return InstallResult(dest, link, target)
