"""Cluster-state backends for netdp: etcd (kvstore mode) behind the IdentityStore interface."""
