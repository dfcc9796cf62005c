"""``lanner cni install``: put the network config and the plugin where a runtime looks for them.

Writes ``<conf-dir>/10-lanner.conflist`` (from the shipped example, with the agent socket and MTU given)
atomically, and the plugin into ``<bin-dir>``, each file as a temporary file renamed into place:

- ``lanner-cni``: the compiled client (``netdp/cni/bin/lanner-cni``, built by ``make cni`` from
  ``lanner-cni.c``), which does the fast path in C, and next to it ``lanner-cni-py``: a three-line
  launcher that runs this installation's plugin.py with ``python -IS``, to which the compiled client
  hands over everything else (it finds it beside the real file of ``/proc/self/exe``);
- when the compiled client was not built: the launcher itself as ``lanner-cni`` (with a warning);
- with ``--symlink``: a link to the ``lanner-cni`` console script.
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
    plugin_link: Path  # <bin-dir>/lanner-cni
    plugin_target: Path  # what it is: the compiled client, plugin.py (launcher) or the console script (link)
    launcher: Path | None = None  # <bin-dir>/lanner-cni-py, next to the compiled client
    warning: str = ""  # why the compiled client was not installed


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
# lanner-cni's Python plugin, written by `lanner cni install`. python -IS: isolated, no site import (the
# plugin needs the stdlib only), which halves the start-up of each call compared with the console script.
import sys
sys.path.insert(0, {plugin_dir!r})
from plugin import main
sys.exit(main())
"""


def launcher_text() -> str:
    return LAUNCHER.format(python=sys.executable, plugin_dir=str(Path(__file__).resolve().parent))


def _replace(dest: Path, write) -> None:
    """Write ``dest`` atomically: ``write(tmp)`` then rename over it (a runtime exec'ing it meanwhile gets
    the old file or the new one, never a partial one)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_launcher(tmp: Path) -> None:
    tmp.write_text(launcher_text())
    tmp.chmod(0o755)


def install(conf_dir: Path, bin_dir: Path, agent_socket: str | None = None, mtu: int | None = None,
            symlink: bool = False, native: Path | None = None) -> InstallResult:
    """Write the conflist and the plugin: the compiled client (``native``, default ``NATIVE``) and its Python
    launcher (the launcher alone when the client was not built), or (``symlink``) a link to the console script."""
    native = NATIVE if native is None else native
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
    _replace(dest, lambda tmp: tmp.write_text(json.dumps(conf, indent=2) + "\n"))
    link = bin_dir / PLUGIN_NAME
    if symlink:
        _replace(link, lambda tmp: tmp.symlink_to(target))
        return InstallResult(dest, link, target)
    if not native.is_file():
        _replace(link, _write_launcher)
        return InstallResult(dest, link, target, warning=f"{native} is not built (run 'make cni'): installed the "
                             f"Python launcher as {PLUGIN_NAME}, which starts an interpreter on every call")
    launcher = bin_dir / LAUNCHER_NAME
    _replace(launcher, _write_launcher)  # first: the client never runs without its slow path

    def copy(tmp: Path) -> None:
        shutil.copyfile(native, tmp)
        tmp.chmod(0o755)

    _replace(link, copy)
    return InstallResult(dest, link, native.resolve(), launcher=launcher)
