"""The generic (policy) sensor: what runs in and reads from the kernel for TracingPolicies.

``sensor`` is the agent's unit (``PolicyHost``: the gRPC API's PolicyManager, records of op GEN_OP),
``engine`` loads the objects and attaches the hooks, ``compiler`` turns a policy (lanner.policy's model) into
map entries, ``scopes`` keeps the workload-scope maps, ``stacks`` resolves stack traces; ``bpf_attach``,
``tracefs``, ``uprobe``, ``usdt`` and ``kernel_btf`` are what attaching needs of the kernel and of binaries.
The BPF programs are in ``bpf/``. The events' wire format is lanner.exporter.tracing.
"""
