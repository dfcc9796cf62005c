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

/*
 * When to wake the reader. Waking it for every record (the default) costs a self-IPI per record in a
 * VM and a reader wakeup per record: about 20 us per exec measured. Instead records are submitted
 * silently, and the reader is woken only once the ring is LANNER_WAKEUP_SHIFT-th full; the agent also
 * polls every few milliseconds, which bounds the latency of a quiet stream.
 */
#define LANNER_WAKEUP_SHIFT 3 /* wake when more than 1/8 of the ring holds unread records */

static __always_inline __u64 lanner_wakeup_flags(void)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);

	return avail > (size >> LANNER_WAKEUP_SHIFT) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* Copy a record to the ring buffer; on failure count it as lost. */
static __always_inline int lanner_output(__u32 op, void *data, __u64 size)
{
	long err = bpf_ringbuf_output(&events, data, size, lanner_wakeup_flags());

	if (err)
		lanner_count_lost(op);
	return err;
}

#ifndef container_of
#define container_of(ptr, type, member) ((type *)((void *)(ptr) - __builtin_offsetof(type, member)))
#endif
