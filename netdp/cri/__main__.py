"""``python -m lanner.netdp.cri``: a small crictl (Debian 12 has none) over lanner's CRI client.

    python -m lanner.netdp.cri -r unix:///run/containerd/containerd.sock version
    python -m lanner.netdp.cri build-image docker.io/local/busybox:1 busybox.tar -- /bin/sh
    python -m lanner.netdp.cri runp web --namespace shop --label app=web --cgroup-parent /kubepods/demo
    python -m lanner.netdp.cri run SANDBOX main local/busybox:1 -- /bin/sleep 3600
    python -m lanner.netdp.cri exec CONTAINER -- /bin/sh -c 'id; ip -4 addr'
    python -m lanner.netdp.cri pods | ps | inspectp SANDBOX | rmp SANDBOX
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

DEFAULT_ENDPOINT = "unix:///run/containerd/containerd.sock"


def _labels(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        key, sep, value = it.partition("=")
        if not sep or not key:
            raise SystemExit(f"--label {it!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lanner.netdp.cri", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--runtime-endpoint", default=DEFAULT_ENDPOINT, help=f"CRI socket (default {DEFAULT_ENDPOINT})")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version")
    sub.add_parser("info", help="runtime conditions")
    b = sub.add_parser("build-image", help="write a busybox OCI tarball for 'ctr -n k8s.io image import'")
    b.add_argument("ref")
    b.add_argument("out", type=Path)
    b.add_argument("command", nargs="+")
    r = sub.add_parser("runp", help="RunPodSandbox; prints the sandbox id")
    r.add_argument("name")
    r.add_argument("--namespace", default="default")
    r.add_argument("--uid", default="")
    r.add_argument("--label", action="append", default=[])
    r.add_argument("--cgroup-parent", default="")
    c = sub.add_parser("run", help="CreateContainer + StartContainer in a sandbox; prints the container id")
    c.add_argument("sandbox")
    c.add_argument("name")
    c.add_argument("image")
    c.add_argument("command", nargs="+")
    e = sub.add_parser("exec", help="ExecSync: run a command in a container, print its output")
    e.add_argument("container")
    e.add_argument("command", nargs="+")
    e.add_argument("--timeout", type=int, default=10)
    sub.add_parser("pods")
    ps = sub.add_parser("ps")
    ps.add_argument("--pod", default="")
    for name in ("inspectp", "stopp", "rmp", "inspect", "stop", "rm"):
        x = sub.add_parser(name)
        x.add_argument("id")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "build-image":
        from lanner.netdp.cri.image import build_image

        print(build_image(args.ref, args.out, args.command))
        return 0
    from lanner.netdp.cri.client import CriClient, CriError

    try:
        with CriClient(args.runtime_endpoint) as cri:
            return _run(cri, args)
    except CriError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(cri, args: argparse.Namespace) -> int:  # noqa: C901 - one branch per subcommand
    if args.cmd == "version":
        print(json.dumps(cri.version().__dict__))
    elif args.cmd == "info":
        print(json.dumps(cri.status()))
    elif args.cmd == "runp":
        cfg = cri.sandbox_config(args.name, args.namespace, args.uid or str(uuid.uuid4()),
                                 labels=_labels(args.label), cgroup_parent=args.cgroup_parent)
        print(cri.run_pod_sandbox(cfg))
    elif args.cmd == "run":
        st = cri.pod_sandbox_status(args.sandbox, verbose=True)
        parent = st.cgroups_path.rsplit("/", 1)[0] if st.cgroups_path.count("/") > 1 else ""
        sb_cfg = cri.sandbox_config(st.name, st.namespace, st.uid, labels=st.labels, annotations=st.annotations,
                                    cgroup_parent=parent)
        cid = cri.create_container(args.sandbox, cri.container_config(args.name, args.image, args.command), sb_cfg)
        cri.start_container(cid)
        print(cid)
    elif args.cmd == "exec":
        r = cri.exec_sync(args.container, args.command, timeout_s=args.timeout)
        sys.stdout.buffer.write(r.stdout)
        sys.stderr.buffer.write(r.stderr)
        return r.exit_code
    elif args.cmd == "pods":
        for s in cri.list_pod_sandbox():
            st = cri.pod_sandbox_status(s.id)
            print(f"{s.id[:13]}  {'Ready' if s.ready else 'NotReady':8}  {s.namespace}/{s.name}  {st.ip or '-'}  "
                  + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())))
    elif args.cmd == "ps":
        for c in cri.list_containers(sandbox_id=args.pod):
            print(f"{c.id[:13]}  {c.state.removeprefix('CONTAINER_'):8}  {c.name}  {c.image}  pod {c.sandbox_id[:13]}")
    elif args.cmd == "inspectp":
        st = cri.pod_sandbox_status(args.id, verbose=True)
        print(json.dumps({**{k: v for k, v in st.__dict__.items() if k != "info"}, "netns": st.netns_path,
                          "cgroups_path": st.cgroups_path}, indent=2))
    elif args.cmd == "inspect":
        st = cri.container_status(args.id, verbose=True)
        print(json.dumps({**{k: v for k, v in st.__dict__.items() if k != "info"}, "pid": st.pid,
                          "cgroups_path": st.cgroups_path}, indent=2))
    elif args.cmd == "stopp":
        cri.stop_pod_sandbox(args.id)
    elif args.cmd == "rmp":
        for c in cri.list_containers(sandbox_id=args.id):
            cri.stop_container(c.id)
            cri.remove_container(c.id)
        cri.stop_pod_sandbox(args.id)
        cri.remove_pod_sandbox(args.id)
    elif args.cmd == "stop":
        cri.stop_container(args.id)
    elif args.cmd == "rm":
        cri.remove_container(args.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
