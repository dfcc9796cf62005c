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
 * silently, and the reader is woken only by the record that takes the unread data past 1/LANNER_WAKEUP_SHIFT
 * of the ring: not by every record above it either, since a wakeup is an irq_work self-IPI (about 8 us in
 * a VM: an APIC write exits to the hypervisor) and a burst would pay it on each record until the reader
 * drains. The agent also polls every few milliseconds, which bounds the latency of a quiet stream and
 * covers a reader that missed the one wakeup.
 */
#define LANNER_WAKEUP_SHIFT 3 /* wake when more than 1/8 of the ring holds unread records */
#define LANNER_RB_RECORD(size) (((size) + 8 + 7) & ~7ULL) /* a record's room in the ring: 8-byte header, 8-aligned */

/* the flags for a record of `size` bytes; `reserved`: it is already reserved (counted in the unread data) */
static __always_inline __u64 lanner_wakeup_flags(__u64 size, bool reserved)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 limit = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) >> LANNER_WAKEUP_SHIFT;
	__u64 rec = LANNER_RB_RECORD(size);

	if (reserved)
		avail = avail > rec ? avail - rec : 0;
	return avail <= limit && avail + rec > limit ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* Copy a record to the ring buffer; on failure count it as lost. */
static __always_inline int lanner_output(__u32 op, void *data, __u64 size)
{
	long err = bpf_ringbuf_output(&events, data, size, lanner_wakeup_flags(size, false));

	if (err)
		lanner_count_lost(op);
	return err;
}

#ifndef container_of
#define container_of(ptr, type, member) ((type *)((void *)(ptr) - __builtin_offsetof(type, member)))
#endif
