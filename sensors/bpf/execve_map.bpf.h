/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * execve_map: the live processes' identities (tgid -> struct execve_entry), the one definition of the
 * map. The process sensor (process.bpf.c) owns and writes it; the policy engine's generic programs include
 * this header too and share the sensor's map by fd (reuse_fd before load), so every object agrees on it.
 * The agent sizes it before load (--execve-map-entries) and seeds it from /proc at start.
 */
#pragma once

#include "process.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct execve_entry);
} execve_map SEC(".maps");
