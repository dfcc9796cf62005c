"""Tetragon-compatible gRPC API: .proto sources under v1/, generated Python under gen/ (``make proto``)."""
