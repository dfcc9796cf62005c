/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Stage 3 of the generic policy datapath: actions. gen_decide applies a matched selector's actions
 * (Signal/Sigkill, Override, TrackSock/UntrackSock, NoPost, rateLimit) and says whether to post the event
 * and with which stacks; gen_deliver, inlined into each program (it alone has the program's context, which
 * bpf_get_stackid needs), takes the stacks and posts the record into the ring.
 */
#pragma once

#include "gen_selectors.bpf.h"

/* what gen_decide / the entry and exit stages return: post the event (and take these stacks) */
#define GEN_DO_POST (1U << 30)
#define GEN_STACK_FLAGS (GSF_KSTACK | GSF_USTACK)

static __always_inline bool gen_rate_limited(struct gen_scratch *s, struct gen_selector *sel)
{
	struct gen_ratelimit_key *k = &s->rl;
	__u64 now = bpf_ktime_get_ns(), *last;

	__builtin_memset(k, 0, sizeof(*k));
	k->hook_id = s->ev.hook_id;
	k->selector = s->ev.selector;
#pragma unroll
	for (int i = 0; i < GEN_MAX_ARGS; i++) {
		k->vals[i] = s->ev.vals[i];
		__builtin_memcpy(&k->head[i][0], s->ev.str[i].s, 16);
	}
	last = bpf_map_lookup_elem(&gen_ratelimit, k);
	if (last && now - *last < sel->rate_limit_ns)
		return true;
	bpf_map_update_elem(&gen_ratelimit, k, &now, BPF_ANY);
	return false;
}

/* Post: the record into the policy ring (lanner_output: the reader is woken only by the record that takes
 * the unread data past 1/8 of the ring). */
static __always_inline int gen_output(void *data, __u64 size)
{
	return lanner_output(GEN_OP, data, size);
}

/* The enforcing actions of a matched selector: Signal and Override. They run before the hooked function
 * does: at the entry, also for a hook with `return: true` whose selector needs no return value
 * (gen_enter; the event is posted at the return). A selector that filters on the return value decides
 * only at the return, when Override can no longer apply: it is not stored then (a stored value would
 * be returned by the thread's next call of a function with an fmod_ret program instead). */
static __always_inline void gen_enforce(struct gen_hook *hook, struct gen_scratch *s, struct gen_selector *sel)
{
	if (sel->flags & GSF_SIGNAL) {
		if (hook->flags & GHF_ENFORCE) {
			bpf_send_signal(sel->signal);
			s->ev.flags |= GEF_SIGNALED;
			gen_stat(s->ev.hook_id, GST_SIGNAL);
		} else {
			gen_stat(s->ev.hook_id, GST_MONITOR_SIGNAL);
		}
	}
	if ((sel->flags & GSF_OVERRIDE) && !(s->ev.flags & GEF_RETURN)) {
		if (hook->flags & GHF_ENFORCE) {
			if (hook->flags & GHF_LSM) {
				s->override_set = 1;
				s->override_ret = sel->override_ret;
			} else {
				__u64 key = bpf_get_current_pid_tgid();
				__s64 rc = sel->override_ret;

				bpf_map_update_elem(&gen_override, &key, &rc, BPF_ANY);
			}
			s->ev.flags |= GEF_OVERRIDDEN;
			gen_stat(s->ev.hook_id, GST_OVERRIDE);
		} else {
			gen_stat(s->ev.hook_id, GST_MONITOR_OVERRIDE);
		}
	}
}

/* apply the matched selector's actions and post the event */
/* TrackSock: the sock -> the event's process, recorded as this policy's */
static __always_inline void gen_track_sock(struct gen_hook *hook, struct gen_scratch *s, __u64 sk)
{
	struct gen_socktrack_val v = { .key = s->ev.key, .policy = hook->policy };

	bpf_map_update_elem(&gen_socktrack, &sk, &v, BPF_ANY);
}

/* Post kernelStackTrace / userStackTrace: the stacks of the event being posted, by id in gen_stacks (the same
 * stack gets the same id; user space deletes an id once read). ctx: the program's context (any program type
 * that has bpf_get_stackid: tracepoint, raw_tp/tp_btf, kprobe, fentry/fexit, LSM, uprobe). Taken when the event
 * is posted: at the return for a return: true hook. */
static __always_inline void gen_take_stacks(void *ctx, struct gen_scratch *s, __u32 flags)
{
	if (flags & GSF_KSTACK) {
		s->ev.kstack = bpf_get_stackid(ctx, &gen_stacks, 0);
		s->ev.flags |= GEF_KSTACK;
	}
	if (flags & GSF_USTACK) {
		s->ev.ustack = bpf_get_stackid(ctx, &gen_stacks, BPF_F_USER_STACK);
		s->ev.flags |= GEF_USTACK;
	}
}

/* the actions of the event's selector (none: Post); GEN_DO_POST | stack flags when it is to be posted */
GEN_STAGE int gen_decide(struct gen_hook *hook)
{
	struct gen_scratch *s = gen_scratch();
	__u32 si;
	struct gen_selector *sel;

	if (!hook || !s)
		return 0;
	si = s->ev.selector;
	gen_stat(s->ev.hook_id, GST_MATCHED);
	if (si >= GEN_MAX_SELECTORS) { /* no selectors: Post */
		s->ev.action = 0;
		return GEN_DO_POST;
	}
	si = GEN_BOUND(si, GEN_MAX_SELECTORS);
	sel = &hook->sel[si];
	s->ev.action = sel->action;
	if (!(s->ev.flags & GEF_ENFORCED))
		gen_enforce(hook, s, sel);
	if (sel->flags & (GSF_TRACKSOCK | GSF_UNTRACKSOCK)) {
		__u64 sk = sel->sock_arg < GEN_MAX_ARGS ? s->ev.aux[GEN_BOUND(sel->sock_arg, GEN_MAX_ARGS)] : 0;

		if (sk && (sel->flags & GSF_TRACKSOCK))
			gen_track_sock(hook, s, sk);
		else if (sk)
			bpf_map_delete_elem(&gen_socktrack, &sk);
	}
	if (!(sel->flags & GSF_POST)) {
		gen_stat(s->ev.hook_id, GST_NOPOST);
		return 0;
	}
	if (sel->rate_limit_ns && gen_rate_limited(s, sel)) {
		gen_stat(s->ev.hook_id, GST_RATE_LIMITED);
		return 0;
	}
	return GEN_DO_POST | (sel->flags & GEN_STACK_FLAGS);
}

/* in the program: a stage's verdict r -> the stacks (with the program's ctx) and the record into the ring */
static __always_inline int gen_deliver(void *ctx, int r)
{
	struct gen_scratch *s;

	if (!(r & GEN_DO_POST))
		return 0;
	s = gen_scratch();
	if (!s)
		return 0;
	if (r & GEN_STACK_FLAGS)
		gen_take_stacks(ctx, s, r & GEN_STACK_FLAGS);
	s->ev.hdr.ktime = bpf_ktime_get_ns();
	if (gen_output(&s->ev, sizeof(s->ev)) == 0)
		gen_stat(s->ev.hook_id, GST_POST);
	else
		gen_stat(s->ev.hook_id, GST_POST_LOST);
	return 0;
}
