/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Shared by every lanner BPF object: the ring buffer, loss accounting and small helpers. */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#ifndef LANNER_RINGBUF_BYTES
#define LANNER_RINGBUF_BYTES (8 * 1024 * 1024) /* the agent resizes it before load (--rb-size) */
#endif
#define LANNER_LOST_SLOTS 16 /* one counter per message op */

/* The events ring buffer: every record starts with struct lanner_event_hdr. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, LANNER_RINGBUF_BYTES);
} events SEC(".maps");

/* Failed ring-buffer reservations, per CPU, indexed by message op. The agent sums them. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LANNER_LOST_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} lanner_lost SEC(".maps");

static __always_inline void lanner_count_lost(__u32 op)
{
	__u32 key = op < LANNER_LOST_SLOTS ? op : 0;
	__u64 *cnt = bpf_map_lookup_elem(&lanner_lost, &key);

	if (cnt)
		*cnt += 1;
}

/* Copy a record to the ring buffer; on failure count it as lost. */
static __always_inline int lanner_output(__u32 op, void *data, __u64 size)
{
	long err = bpf_ringbuf_output(&events, data, size, 0);

	if (err)
		lanner_count_lost(op);
	return err;
}

#ifndef container_of
#define container_of(ptr, type, member) ((type *)((void *)(ptr) - __builtin_offsetof(type, member)))
#endif
