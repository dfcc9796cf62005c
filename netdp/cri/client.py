"""A CRI v1 client (RuntimeService + ImageService) over a unix socket, as the kubelet talks to containerd.

``CriClient(socket_path)`` wraps the generated stubs (``make proto`` builds ``lanner.netdp.cri.gen``) with
typed calls and small result records. Errors from the runtime are raised as ``CriError`` naming the RPC
and the object it was about.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

try:
    from lanner.netdp.cri.gen import api_pb2 as pb
    from lanner.netdp.cri.gen import api_pb2_grpc as pb_grpc
except ImportError as exc:  # pragma: no cover - generated at build time
    raise ImportError(f"lanner.netdp.cri.gen is not generated ({exc}): run 'make proto'") from exc

DEFAULT_TIMEOUT_S = 30.0


class CriError(RuntimeError):
    """A CRI call failed; ``code`` is the gRPC status code."""

    def __init__(self, rpc: str, what: str, code: grpc.StatusCode | None, detail: str) -> None:
        super().__init__(f"CRI {rpc}({what}): {code.name if code else 'error'}: {detail}")
        self.rpc = rpc
        self.code = code


@dataclass(frozen=True)
class RuntimeVersion:
    version: str
    runtime_name: str
    runtime_version: str
    runtime_api_version: str


@dataclass(frozen=True)
class SandboxStatus:
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    ready: bool
    created_at_ns: int
    ip: str
    additional_ips: tuple[str, ...]
    labels: dict[str, str]
    annotations: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)  # verbose: JSON-decoded values

    @property
    def netns_path(self) -> str:
        """The sandbox's network namespace path (from verbose info; "" when unknown)."""
        spec = _runtime_spec(self.info)
        for ns in (spec.get("linux") or {}).get("namespaces") or []:
            if ns.get("type") == "network":
                return ns.get("path", "")
        return ""

    @property
    def pid(self) -> int:
        return int(self.info.get("info", {}).get("pid", 0) or 0) if isinstance(self.info.get("info"), dict) else 0

    @property
    def cgroups_path(self) -> str:
        return (_runtime_spec(self.info).get("linux") or {}).get("cgroupsPath", "")


@dataclass(frozen=True)
class SandboxSummary:
    id: str
    name: str
    namespace: str
    uid: str
    ready: bool
    labels: dict[str, str]
    annotations: dict[str, str]


@dataclass(frozen=True)
class ContainerStatus:
    id: str
    name: str
    state: str  # CONTAINER_CREATED / RUNNING / EXITED / UNKNOWN
    image: str  # the image as the config named it
    image_ref: str  # the digested reference (image id)
    exit_code: int
    started_at_ns: int
    finished_at_ns: int
    labels: dict[str, str]
    annotations: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)  # verbose: JSON-decoded values

    @property
    def pid(self) -> int:
        return int(self.info.get("pid", 0) or 0)

    @property
    def sandbox_id(self) -> str:
        return str(self.info.get("sandboxID", ""))

    @property
    def cgroups_path(self) -> str:
        return (_runtime_spec(self.info).get("linux") or {}).get("cgroupsPath", "")


@dataclass(frozen=True)
class ContainerSummary:
    id: str
    sandbox_id: str
    name: str
    state: str
    image: str
    image_ref: str
    labels: dict[str, str]


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


def _runtime_spec(info: dict[str, Any]) -> dict:
    # containerd puts the OCI spec under info["info"]["runtimeSpec"] (sandbox) or info["info"] (container)
    inner = info.get("info", info)
    spec = inner.get("runtimeSpec") if isinstance(inner, dict) else None
    return spec if isinstance(spec, dict) else {}


def _decode_info(info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in dict(info).items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


class CriClient:
    """``CriClient("/run/containerd/containerd.sock")``: the kubelet's calls, one method each."""

    def __init__(self, socket_path: str | Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        path = str(socket_path)
        if path.startswith("unix://"):
            path = path[len("unix://"):]
        self.socket_path = path
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(f"unix://{path}")
        self.runtime = pb_grpc.RuntimeServiceStub(self._channel)
        self.images = pb_grpc.ImageServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "CriClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, stub: Any, rpc: str, req: Any, what: str = "", timeout_s: float | None = None) -> Any:
        try:
            return getattr(stub, rpc)(req, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            raise CriError(rpc, what or self.socket_path, code, detail or "") from None

    # ------------------------------------------------------------------ runtime
    def version(self) -> RuntimeVersion:
        r = self._call(self.runtime, "Version", pb.VersionRequest(version="v1"))
        return RuntimeVersion(r.version, r.runtime_name, r.runtime_version, r.runtime_api_version)

    def status(self) -> dict[str, bool]:
        """Runtime conditions, e.g. ``{"RuntimeReady": True, "NetworkReady": True}``."""
        r = self._call(self.runtime, "Status", pb.StatusRequest())
        return {c.type: c.status for c in r.status.conditions}

    def status_conditions(self) -> dict[str, tuple[bool, str, str]]:
        r = self._call(self.runtime, "Status", pb.StatusRequest())
        return {c.type: (c.status, c.reason, c.message) for c in r.status.conditions}

    # ------------------------------------------------------------------ sandboxes
    @staticmethod
    def sandbox_config(name: str, namespace: str, uid: str, labels: dict[str, str] | None = None,
                       annotations: dict[str, str] | None = None, hostname: str = "", log_directory: str = "",
                       cgroup_parent: str = "", attempt: int = 0) -> Any:
        """A ``PodSandboxConfig`` as the kubelet builds one (pod network, PID namespace per container)."""
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=attempt),
            hostname=hostname or name, log_directory=log_directory,
            labels=labels or {}, annotations=annotations or {},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))))

    def run_pod_sandbox(self, config: Any, runtime_handler: str = "") -> str:
        what = f"{config.metadata.namespace}/{config.metadata.name}"
        r = self._call(self.runtime, "RunPodSandbox", pb.RunPodSandboxRequest(config=config,
                                                                             runtime_handler=runtime_handler), what)
        return r.pod_sandbox_id

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self._call(self.runtime, "StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), sandbox_id)

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self._call(self.runtime, "RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                   sandbox_id)

    def pod_sandbox_status(self, sandbox_id: str, verbose: bool = False) -> SandboxStatus:
        r = self._call(self.runtime, "PodSandboxStatus",
                       pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose), sandbox_id)
        s = r.status
        return SandboxStatus(
            id=s.id, name=s.metadata.name, namespace=s.metadata.namespace, uid=s.metadata.uid,
            attempt=s.metadata.attempt, ready=s.state == pb.SANDBOX_READY, created_at_ns=s.created_at,
            ip=s.network.ip, additional_ips=tuple(a.ip for a in s.network.additional_ips),
            labels=dict(s.labels), annotations=dict(s.annotations), info=_decode_info(r.info))

    def list_pod_sandbox(self, labels: dict[str, str] | None = None, sandbox_id: str = "",
                         ready_only: bool = False) -> list[SandboxSummary]:
        f = pb.PodSandboxFilter(id=sandbox_id, label_selector=labels or {})
        if ready_only:
            f.state.state = pb.SANDBOX_READY
        r = self._call(self.runtime, "ListPodSandbox", pb.ListPodSandboxRequest(filter=f))
        return [SandboxSummary(i.id, i.metadata.name, i.metadata.namespace, i.metadata.uid,
                               i.state == pb.SANDBOX_READY, dict(i.labels), dict(i.annotations)) for i in r.items]

    # ------------------------------------------------------------------ containers
    @staticmethod
    def container_config(name: str, image: str, command: list[str], args: list[str] | None = None,
                         labels: dict[str, str] | None = None, envs: dict[str, str] | None = None,
                         log_path: str = "", attempt: int = 0) -> Any:
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name, attempt=attempt), image=pb.ImageSpec(image=image),
            command=command, args=args or [], labels=labels or {}, log_path=log_path,
            envs=[pb.KeyValue(key=k, value=v) for k, v in (envs or {}).items()],
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))))

    def create_container(self, sandbox_id: str, config: Any, sandbox_config: Any) -> str:
        r = self._call(self.runtime, "CreateContainer",
                       pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config,
                                                 sandbox_config=sandbox_config),
                       f"{sandbox_id[:12]}/{config.metadata.name}")
        return r.container_id

    def start_container(self, container_id: str) -> None:
        self._call(self.runtime, "StartContainer", pb.StartContainerRequest(container_id=container_id), container_id)

    def stop_container(self, container_id: str, timeout_s: int = 0) -> None:
        self._call(self.runtime, "StopContainer", pb.StopContainerRequest(container_id=container_id,
                                                                          timeout=timeout_s), container_id)

    def remove_container(self, container_id: str) -> None:
        self._call(self.runtime, "RemoveContainer", pb.RemoveContainerRequest(container_id=container_id),
                   container_id)

    def container_status(self, container_id: str, verbose: bool = False) -> ContainerStatus:
        r = self._call(self.runtime, "ContainerStatus",
                       pb.ContainerStatusRequest(container_id=container_id, verbose=verbose), container_id)
        s = r.status
        return ContainerStatus(
            id=s.id, name=s.metadata.name, state=pb.ContainerState.Name(s.state), image=s.image.image,
            image_ref=s.image_ref, exit_code=s.exit_code, started_at_ns=s.started_at, finished_at_ns=s.finished_at,
            labels=dict(s.labels), annotations=dict(s.annotations), info=_decode_info(r.info).get("info", {}))

    def list_containers(self, sandbox_id: str = "", labels: dict[str, str] | None = None) -> list[ContainerSummary]:
        f = pb.ContainerFilter(pod_sandbox_id=sandbox_id, label_selector=labels or {})
        r = self._call(self.runtime, "ListContainers", pb.ListContainersRequest(filter=f), sandbox_id)
        return [ContainerSummary(c.id, c.pod_sandbox_id, c.metadata.name, pb.ContainerState.Name(c.state),
                                 c.image.image, c.image_ref, dict(c.labels)) for c in r.containers]

    def exec_sync(self, container_id: str, cmd: list[str], timeout_s: int = 10) -> ExecResult:
        """Run ``cmd`` in the container (``kubectl exec`` without a TTY) and wait for it."""
        r = self._call(self.runtime, "ExecSync", pb.ExecSyncRequest(container_id=container_id, cmd=cmd,
                                                                    timeout=timeout_s),
                       f"{container_id[:12]} {cmd[:1]}", timeout_s=timeout_s + 10)
        return ExecResult(r.exit_code, r.stdout, r.stderr)

    # ------------------------------------------------------------------ images
    def list_images(self) -> list[tuple[str, tuple[str, ...]]]:
        """(image id, repo tags) of every image the runtime has."""
        r = self._call(self.images, "ListImages", pb.ListImagesRequest())
        return [(i.id, tuple(i.repo_tags)) for i in r.images]

    def image_status(self, image: str) -> tuple[str, tuple[str, ...]] | None:
        r = self._call(self.images, "ImageStatus", pb.ImageStatusRequest(image=pb.ImageSpec(image=image)), image)
        return (r.image.id, tuple(r.image.repo_tags)) if r.image.id else None


__all__ = ["ContainerStatus", "ContainerSummary", "CriClient", "CriError", "ExecResult", "RuntimeVersion",
           "SandboxStatus", "SandboxSummary"]
