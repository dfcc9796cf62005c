"""Client side of the agent's gRPC API, for ``lanner getevents``, ``status``, ``version`` and
``tracingpolicy``.

The server address comes from ``--server-address``; without it, from the info file the agent writes
(``/var/run/lanner/lanner-info.json``); without that, the default unix socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import orjson

from lanner.exporter.api.gen.tetragon import events_pb2, sensors_pb2, tetragon_pb2
from lanner.exporter.grpc_api import DEFAULT_ADDRESS, DEFAULT_INFO_FILE, SERVICE, STATUS_METHOD


class AgentUnavailable(ConnectionError):
    pass


class ApiError(RuntimeError):
    """The agent refused a request; the message is the agent's."""


@dataclass(frozen=True)
class TlsOptions:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


def resolve_address(explicit: str | None, info_file: Path = DEFAULT_INFO_FILE) -> str:
    if explicit:
        return explicit
    try:
        info = orjson.loads(info_file.read_bytes())
        if info.get("server_address"):
            return str(info["server_address"])
    except (OSError, orjson.JSONDecodeError):
        pass
    return DEFAULT_ADDRESS


class AgentClient:
    def __init__(self, address: str | None = None, timeout: float = 10.0, tls: TlsOptions | None = None) -> None:
        self.address = resolve_address(address)
        self.timeout = timeout
        if tls and (tls.ca_file or tls.cert_file):
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls.ca_file).read_bytes() if tls.ca_file else None,
                private_key=Path(tls.key_file).read_bytes() if tls.key_file else None,
                certificate_chain=Path(tls.cert_file).read_bytes() if tls.cert_file else None)
            opts = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
            self.channel = grpc.secure_channel(self.address, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(self.address)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: str, request: object, response_cls: type) -> object:
        call = self.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=response_cls.FromString)
        return self._call(call, request)

    def _call(self, call: object, request: object) -> object:
        try:
            return call(request, timeout=self.timeout)  # type: ignore[operator]
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> Exception:
        code = exc.code() if hasattr(exc, "code") else None
        if code == grpc.StatusCode.UNAVAILABLE:
            return AgentUnavailable(f"cannot reach the lanner agent at {self.address}; is 'lanner agent' running?")
        return ApiError(exc.details() if hasattr(exc, "details") else str(exc))

    # ---- calls
    def status(self) -> dict:
        call = self.channel.unary_unary(STATUS_METHOD, request_serializer=None, response_deserializer=None)
        return orjson.loads(self._call(call, b""))  # type: ignore[arg-type]

    def version(self) -> str:
        return self._unary("GetVersion", sensors_pb2.GetVersionRequest(), sensors_pb2.GetVersionResponse).version

    def health(self) -> tetragon_pb2.GetHealthStatusResponse:
        return self._unary("GetHealth", tetragon_pb2.GetHealthStatusRequest(), tetragon_pb2.GetHealthStatusResponse)

    def events(self, request: events_pb2.GetEventsRequest) -> Iterator[events_pb2.GetEventsResponse]:
        call = self.channel.unary_stream(f"/{SERVICE}/GetEvents", request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=events_pb2.GetEventsResponse.FromString)
        stream = call(request)
        try:
            yield from stream
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._error(exc) from None
        finally:
            stream.cancel()

    def add_policy(self, yaml_text: str) -> None:
        self._unary("AddTracingPolicy", sensors_pb2.AddTracingPolicyRequest(yaml=yaml_text),
                    sensors_pb2.AddTracingPolicyResponse)

    def delete_policy(self, name: str, namespace: str = "") -> None:
        self._unary("DeleteTracingPolicy", sensors_pb2.DeleteTracingPolicyRequest(name=name, namespace=namespace),
                    sensors_pb2.DeleteTracingPolicyResponse)

    def list_policies(self) -> list:
        return list(self._unary("ListTracingPolicies", sensors_pb2.ListTracingPoliciesRequest(),
                                sensors_pb2.ListTracingPoliciesResponse).policies)

    def configure_policy(self, name: str, namespace: str = "", enable: bool | None = None,
                         mode: int | None = None) -> None:
        req = sensors_pb2.ConfigureTracingPolicyRequest(name=name, namespace=namespace)
        if enable is not None:
            req.enable = enable
        if mode is not None:
            req.mode = mode
        self._unary("ConfigureTracingPolicy", req, sensors_pb2.ConfigureTracingPolicyResponse)


def event_json(ev: events_pb2.GetEventsResponse) -> bytes:
    """The event as one JSON line with proto field names, as the export file has it."""
    from google.protobuf import json_format

    return orjson.dumps(json_format.MessageToDict(ev, preserving_proto_field_name=True))
