"""A one-layer OCI image of busybox-static, built locally (nothing is pulled).

``build_image(ref, out, cmd)`` writes an OCI-layout tarball (``index.json`` annotated with
``io.containerd.image.name``) that ``ctr -n k8s.io image import`` loads into containerd, where the CRI
sees it as ``ref``. The layer holds /bin/busybox, links for common applets, /etc/passwd and a
/www/index.html for ``httpd``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "cat", "echo", "ls", "nc", "wget", "ping", "ip", "hostname", "id", "true", "false",
           "httpd", "ps", "grep", "timeout", "env", "mkdir", "ifconfig", "sysctl")


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _layer() -> bytes:
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX} is missing: install busybox-static")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "var", "www"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(ti)
        data = BUSYBOX.read_bytes()
        ti = tarfile.TarInfo("bin/busybox")
        ti.size, ti.mode = len(data), 0o755
        tar.addfile(ti, io.BytesIO(data))
        for a in APPLETS:
            ti = tarfile.TarInfo(f"bin/{a}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(ti)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n"),
                           ("www/index.html", "hello from a pod\n")):
            raw = text.encode()
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(raw), 0o644
            tar.addfile(ti, io.BytesIO(raw))
    return buf.getvalue()


def build_image(ref: str, out: Path, cmd: list[str]) -> Path:
    """An OCI-layout tarball of a busybox image named ``ref`` (e.g. ``docker.io/local/busybox:1``)."""
    layer_digest, layer = _blob(_layer())
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }).encode()
    config_digest, config = _blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": len(layer)}],
    }).encode()
    manifest_digest, manifest = _blob(manifest)
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                       "size": len(manifest), "annotations": {"io.containerd.image.name": ref,
                                                              "org.opencontainers.image.ref.name": ref}}],
    }).encode()
    with tarfile.open(out, "w") as tar:
        files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
        files += [(f"blobs/sha256/{d.split(':')[1]}", b) for d, b in
                  ((layer_digest, layer), (config_digest, config), (manifest_digest, manifest))]
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tar.addfile(ti, io.BytesIO(data))
    return out


__all__ = ["APPLETS", "BUSYBOX", "build_image"]
