"""lanner: runtime security agent with its own eBPF datapath."""

__version__ = "0.1.0"
