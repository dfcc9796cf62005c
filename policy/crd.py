"""The TracingPolicy schema lanner accepts, written as data (see :mod:`lanner.policy.schema`).

This mirrors the OpenAPI v3 schema of Tetragon's CRDs (``cilium.io_tracingpolicies.yaml`` and
``..namespaced.yaml``, CRD schema 1.8.13): the same fields, types, enums, defaults, required
fields and limits. It is written out here rather than loaded from the CRD file because the project
must not carry a copy of Tetragon's files; ``tests/test_policy_crd.py`` reads the real CRD from
``../shared`` and fails on any drift.

Deliberate differences from the CRD, each for compatibility:

* ``metadata`` is typed (name, namespace, labels, annotations and the server-populated ObjectMeta
  fields) instead of a bare object, so unknown metadata fields are reported like everywhere else;
* the action enum also accepts the deprecated ``FollowFD``, ``UnfollowFD`` and ``CopyFD`` (dropped
  from the CRD after Tetragon v1.7.0, still accepted by v1.7.0) and their ``argFd``/``argName``
  parameters; the validator warns when they are used.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["API_VERSION", "KINDS", "TRACING_POLICY", "TRACING_POLICY_NAMESPACED"]

from .model import API_VERSION, DEPRECATED_ACTIONS, KIND_CLUSTER, KIND_NAMESPACED
from .schema import Node, Rule, anything, arr, boolean, integer, mapping, obj, string

KINDS = (KIND_CLUSTER, KIND_NAMESPACED)

# Enums, in the CRD's order.
ARG_TYPES: tuple[str, ...] = (
    "auto", "int", "sint8", "int8", "uint8", "sint16", "int16", "uint16", "uint32", "sint32", "int32",
    "ulong", "uint64", "size_t", "long", "sint64", "int64", "char_buf", "char_iovec", "skb", "sock",
    "sockaddr", "socket", "sockaddr_un", "string", "fd", "file", "filename", "path", "nop", "bpf_attr",
    "perf_event", "bpf_map", "user_namespace", "capability", "kiocb", "iov_iter", "cred", "const_buf",
    "load_info", "module", "syscall64", "kernel_cap_t", "cap_inheritable", "cap_permitted",
    "cap_effective", "linux_binprm", "data_loc", "net_device", "bpf_cmd", "dentry", "bpf_prog",
)
OPERATORS: tuple[str, ...] = (
    "Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix", "GreaterThan", "LessThan",
    "GT", "LT", "Mask", "SPort", "NotSPort", "SPortPriv", "NotSportPriv", "DPort", "NotDPort",
    "DPortPriv", "NotDPortPriv", "SAddr", "NotSAddr", "DAddr", "NotDAddr", "Protocol", "Family",
    "State", "InMap", "NotInMap", "CapabilitiesGained", "InRange", "NotInRange", "SubString",
    "SubStringIgnCase", "CelExpr", "FileType", "NotFileType",
)
# Aliases the CRD accepts, and the name lanner stores instead.
OPERATOR_ALIASES: Mapping[str, str] = MappingProxyType({"GT": "GreaterThan", "LT": "LessThan"})
CRD_ACTIONS: tuple[str, ...] = (
    "Post", "Sigkill", "Override", "GetUrl", "DnsLookup", "NoPost", "Signal", "TrackSock",
    "UntrackSock", "NotifyEnforcer", "CleanupEnforcerNotification", "Set",
)
ACTIONS: tuple[str, ...] = CRD_ACTIONS + DEPRECATED_ACTIONS
BINARY_OPERATORS = ("In", "NotIn", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
IN_NOT_IN = ("In", "NotIn")
NAMESPACE_TYPES = ("Uts", "Ipc", "Mnt", "Pid", "PidForChildren", "Net", "Time", "TimeForChildren", "Cgroup", "User")
CAPABILITY_TYPES = ("Effective", "Inheritable", "Permitted")
LIST_TYPES = ("syscalls", "generated_syscalls", "generated_ftrace")
LABEL_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

MAX_TAGS = 16


# ------------------------------------------------------------------------------------ CEL rules
def _at_most_one(*names: str) -> Rule:
    def check(o: Mapping[str, Any]) -> str | None:
        present = [n for n in names if n in o]
        if len(present) > 1:
            return f"at most one of {', '.join(names)} may be set, got {' and '.join(present)}"
        return None
    return Rule(check)


def _return_needs_return_arg(o: Mapping[str, Any]) -> str | None:
    if o.get("return") is True and "returnArg" not in o:
        return "required when return is true"
    return None


def _host_selector_null_or_empty(o: Mapping[str, Any]) -> str | None:
    if o:
        return "hostSelector must be null (no host processes) or {} (all host processes)"
    return None


RETURN_NEEDS_RETURN_ARG = Rule(_return_needs_return_arg, at="returnArg")
HOST_SELECTOR_EMPTY = Rule(_host_selector_null_or_empty)


def _no_host_selector(o: Mapping[str, Any]) -> str | None:
    spec = o.get("spec")
    if isinstance(spec, dict) and "hostSelector" in spec:
        return "not allowed in a TracingPolicyNamespaced (it applies only to pods in its own namespace)"
    return None


# ------------------------------------------------------------------------------ building blocks
def label_selector(*, host: bool = False) -> Node:
    return obj({
        "matchExpressions": arr(obj({
            "key": string(),
            "operator": string(enum=LABEL_OPERATORS),
            "values": arr(string()),
        }, required=("key", "operator"))),
        "matchLabels": mapping(string(max_length=63, pattern=LABEL_VALUE_PATTERN)),
    }, rules=(HOST_SELECTOR_EMPTY,) if host else ())


def arg() -> Node:
    return obj({
        "btfType": string(),
        "btfTypeModule": string(),
        "index": integer(minimum=0),
        "label": string(),
        "maxData": boolean(default=False),
        "resolve": string(default=""),
        "returnCopy": boolean(default=False),
        "sizeArgIndex": integer(minimum=0),
        "source": string(),
        "type": string(enum=ARG_TYPES, default="auto"),
    }, required=("index", "type"))


def arg_selector() -> Node:
    return obj({
        "args": arr(integer(minimum=0)),
        "index": integer(minimum=0),
        "operator": string(enum=OPERATORS),
        "values": arr(string()),
    }, required=("operator",))


def binary_selector() -> Node:
    return obj({
        "followChildren": boolean(default=False),
        "operator": string(enum=BINARY_OPERATORS),
        "values": arr(string()),
    }, required=("operator", "values"))


def capabilities_selector() -> Node:
    return obj({
        "isNamespaceCapability": boolean(default=False),
        "operator": string(enum=IN_NOT_IN),
        "type": string(enum=CAPABILITY_TYPES, default="Effective"),
        "values": arr(string()),
    }, required=("operator", "values"))


def action() -> Node:
    return obj({
        "action": string(enum=ACTIONS),
        "argError": integer(),
        "argFd": integer(),  # deprecated FollowFD/UnfollowFD/CopyFD only
        "argFqdn": string(),
        "argIndex": integer(),
        "argName": integer(),  # deprecated FollowFD/UnfollowFD/CopyFD only
        "argNewAddr": integer("int64"),
        "argNewOffset": integer("int64"),
        "argNewSymbol": string(),
        "argRegs": arr(string()),
        "argSig": integer(),
        "argSock": integer(),
        "argUrl": string(),
        "argValue": integer(),
        "imaHash": boolean(),
        "kernelStackTrace": boolean(),
        "rateLimit": string(),
        "rateLimitScope": string(),
        "userStackTrace": boolean(),
    }, required=("action",), rules=(_at_most_one("argNewSymbol", "argNewAddr", "argNewOffset"),))


def selector() -> Node:
    return obj({
        "label": string(),
        "macros": arr(string()),
        "matchActions": arr(action()),
        "matchArgs": arr(arg_selector()),
        "matchBinaries": arr(binary_selector(), max_items=1),
        "matchCapabilities": arr(capabilities_selector()),
        "matchCapabilityChanges": arr(capabilities_selector()),
        "matchData": arr(arg_selector()),
        "matchNamespaceChanges": arr(obj({
            "operator": string(enum=IN_NOT_IN),
            "values": arr(string()),
        }, required=("operator", "values"))),
        "matchNamespaces": arr(obj({
            "namespace": string(enum=NAMESPACE_TYPES),
            "operator": string(enum=IN_NOT_IN),
            "values": arr(string()),
        }, required=("namespace", "operator", "values"))),
        "matchPIDs": arr(obj({
            "followForks": boolean(default=False),
            "isNamespacePID": boolean(default=False),
            "operator": string(enum=IN_NOT_IN),
            "values": arr(integer()),
        }, required=("operator", "values"))),
        "matchParentBinaries": arr(binary_selector(), max_items=1),
        "matchReturnActions": arr(action()),
        "matchReturnArgs": arr(arg_selector()),
        "matchWorkloads": obj({
            "containerSelector": label_selector(),
            "hostSelector": label_selector(host=True),
            "podSelector": label_selector(),
        }),
    })


def _common_hook_fields() -> dict[str, Node]:
    return {
        "args": arr(arg()),
        "message": string(),
        "selectors": arr(selector()),
        "tags": arr(string(), max_items=MAX_TAGS),
    }


def kprobe() -> Node:
    """Also the schema of ``fentries[]``: the CRD uses the same one."""
    return obj({
        **_common_hook_fields(),
        "call": string(),
        "data": arr(arg()),
        "ignore": obj({"callNotFound": boolean()}),
        "return": boolean(default=False),
        "returnArg": arg(),
        "returnArgAction": string(),
        "syscall": boolean(default=True),
    }, required=("call",), rules=(RETURN_NEEDS_RETURN_ARG,))


def tracepoint() -> Node:
    return obj({
        **_common_hook_fields(),
        "event": string(),
        "raw": boolean(),
        "subsystem": string(),
    }, required=("event", "subsystem"))


def uprobe() -> Node:
    return obj({
        **_common_hook_fields(),
        "addrs": arr(integer("int64")),
        "binaryDigests": arr(string()),
        "btfPath": string(),
        "data": arr(arg()),
        "ignore": obj({"digestVerificationFailure": boolean()}),
        "offsets": arr(integer("int64")),
        "path": string(),
        "refCtrOffsets": arr(integer("int64")),
        "return": boolean(default=False),
        "returnArg": arg(),
        "symbols": arr(string()),
    }, required=("path",), rules=(_at_most_one("symbols", "addrs", "offsets"), RETURN_NEEDS_RETURN_ARG))


def usdt() -> Node:
    return obj({
        **_common_hook_fields(),
        "btfPath": string(),
        "name": string(),
        "path": string(),
        "provider": string(),
    }, required=("name", "path", "provider"))


def lsmhook() -> Node:
    return obj({**_common_hook_fields(), "hook": string()}, required=("hook",))


def spec() -> Node:
    return obj({
        "containerSelector": label_selector(),
        "enforcers": arr(obj({"calls": arr(string())}, required=("calls",))),
        "fentries": arr(kprobe()),
        "hostSelector": label_selector(host=True),
        "kprobes": arr(kprobe()),
        "lists": arr(obj({
            "name": string(),
            "pattern": string(),
            "type": string(enum=LIST_TYPES),
            "validated": boolean(),
            "values": arr(string()),
        }, required=("name",))),
        "loader": boolean(),
        "lsmhooks": arr(lsmhook()),
        "nodeSelector": label_selector(),
        "options": arr(obj({"name": string(), "value": string()}, required=("name",))),
        "podSelector": label_selector(),
        "selectorsMacros": mapping(selector()),
        "tracepoints": arr(tracepoint()),
        "uprobes": arr(uprobe()),
        "usdts": arr(usdt()),
    })


def object_meta() -> Node:
    """Kubernetes ObjectMeta. name/namespace/labels/annotations are kept; the server-populated
    fields (as in ``kubectl get -o yaml`` output) are accepted and dropped."""
    return obj({
        "name": string(),
        "namespace": string(),
        "labels": mapping(string()),
        "annotations": mapping(string()),
        "generateName": string(),
        "uid": string(),
        "resourceVersion": string(),
        "generation": integer("int64"),
        "selfLink": string(),
        "creationTimestamp": anything(),
        "deletionTimestamp": anything(),
        "deletionGracePeriodSeconds": integer("int64"),
        "finalizers": arr(string()),
        "ownerReferences": anything(),
        "managedFields": anything(),
    })


def root(*, namespaced: bool) -> Node:
    return obj({
        "apiVersion": string(),
        "kind": string(),
        "metadata": object_meta(),
        "spec": spec(),
    }, required=("metadata", "spec"), rules=(Rule(_no_host_selector, at="spec.hostSelector"),) if namespaced else ())


TRACING_POLICY: Node = root(namespaced=False)
TRACING_POLICY_NAMESPACED: Node = root(namespaced=True)
