/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The generic policy datapath, by stage: maps (gen_maps.bpf.h), argument readers (gen_args.bpf.h), filters
 * (gen_filters.bpf.h), selectors (gen_selectors.bpf.h), actions (gen_actions.bpf.h), and here the entry and
 * exit stages that run them. A program finds its hook's configuration in gen_hooks by its bpf_cookie (or
 * its .rodata hook id); nothing depends on a particular policy.
 *
 * Each stage is a BPF global function (GEN_STAGE): the verifier checks it once, on its own, instead of
 * once per state of every caller, so a program's cost is the sum of its stages, not their product, and
 * stays far below the verifier's budget on every kernel (lanner probe --programs; docs/kernels.md). The
 * programs keep only what needs their context: reading the hook id, the stacks and the ring output.
 */
#pragma once

#include "gen_args.bpf.h"
#include "gen_actions.bpf.h"

/* ------------------------------------------------------------------------------------ entry points */
static __always_inline void gen_begin(struct gen_scratch *s, __u32 hook_id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	s->rev_done = 0;
	s->override_set = 0;
	s->ev.hdr.op = GEN_OP;
	s->ev.hdr.cpu = bpf_get_smp_processor_id();
	s->ev.hook_id = hook_id;
	s->ev.tid = (__u32)pid_tgid;
	s->ev.flags = 0;
	s->ev.trunc = 0;
	s->ev.ret = 0;
	s->ev.selector = GEN_MAX_SELECTORS;
	s->key_done = 0; /* the process key and binary are read when needed (gen_fill_key, gen_load_binary) */
}

/* the event's process key, once a selector matched (a tracked sock's owner, set while reading args, stays) */
static __always_inline void gen_fill_key(struct gen_scratch *s)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct execve_entry *e;

	if (s->key_done)
		return;
	s->key_done = 1;
	e = bpf_map_lookup_elem(&execve_map, &tgid);
	if (e) {
		s->ev.key = e->key;
	} else {
		s->ev.key.pid = tgid;
		s->ev.key.pad = 0;
		s->ev.key.ktime = 0;
		s->ev.flags |= GEF_NOPROC;
	}
}

static __always_inline __u64 gen_inflight_key(__u32 hook_id)
{
	return (bpf_get_current_pid_tgid() << 32) | hook_id;
}

/* a workload-scoped hook runs for the selected pods only (the task's netns is one of theirs) and, for a
 * containerSelector, for the selected containers (the task's cgroup is one of theirs) */
static __always_inline bool gen_in_scope(struct gen_hook *hook)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct gen_scope_key k = { .scope = hook->policy };
	struct gen_scope_cg_key c = { .scope = hook->policy };

	k.netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum); /* 0 for an exiting task: in no scope */
	if (bpf_map_lookup_elem(&gen_scope, &k))
		return true;
	if (!(hook->flags & GHF_SCOPED_CG))
		return false;
	c.cgroup = bpf_get_current_cgroup_id();
	return bpf_map_lookup_elem(&gen_scope_cg, &c) != NULL;
}

/* the first selector whose process conditions and argument filters hold (-1: none). The process
 * conditions come first: when no selector can match, no argument is read. */
static __always_inline int gen_match(__u64 ctx, struct gen_hook *hook)
{
	__u32 cand = 0, nsel = hook->nselectors;

	if (nsel) {
#pragma unroll
		for (int i = 0; i < GEN_MAX_SELECTORS; i++) {
			if (i >= nsel)
				break;
			if (gen_sel_process(&hook->sel[i], 0))
				cand |= 1U << i;
		}
		if (!cand)
			return -1;
	}
#pragma unroll
	for (int i = 0; i < GEN_MAX_ARGS; i++) {
		if (i >= hook->nargs)
			break;
		gen_read_arg(hook, ctx, i);
	}
	if (!nsel)
		return GEN_MAX_SELECTORS; /* no selectors: every call matches */
#pragma unroll
	for (int i = 0; i < GEN_MAX_SELECTORS; i++) {
		if ((cand & (1U << i)) && gen_sel_filters(&hook->sel[i], 0) && gen_sel_process(&hook->sel[i], 1)) {
			gen_sel_matched(&hook->sel[i]);
			return i;
		}
	}
	return -1;
}

/* the entry stage of a hook: arguments, selectors, actions; the event stays in the scratch for gen_deliver
 * (or goes to gen_inflight when the hook also has a return half) */
GEN_STAGE int gen_enter_stage(__u32 hook_id, struct gen_hook *hook)
{
	struct gen_scratch *s = gen_scratch();
	__u64 key, ctx;
	__u32 si;
	int m;

	if (!hook || !s)
		return 0;
	ctx = s->ctx;
	gen_begin(s, hook_id);
	s->share = !!(hook->flags & GHF_SYSCALL); /* a dispatcher hook: it shares what this invocation read */
	if ((hook->flags & GHF_SCOPED) && !gen_in_scope(hook)) /* after gen_begin: no stale LSM override */
		return 0;
	s->ev.nargs = hook->nargs;
	m = gen_match(ctx, hook);
	if (m < 0)
		return 0;
	s->ev.selector = m;
	gen_fill_key(s);
	if (hook->flags & GHF_HAS_RET) {
		si = s->ev.selector;
		if (si < GEN_MAX_SELECTORS && !(hook->sel[GEN_BOUND(si, GEN_MAX_SELECTORS)].flags & GSF_HAS_RET)) {
			gen_enforce(hook, s, &hook->sel[GEN_BOUND(si, GEN_MAX_SELECTORS)]); /* before the function runs */
			s->ev.flags |= GEF_ENFORCED;
		}
		key = gen_inflight_key(hook_id);
		bpf_map_update_elem(&gen_inflight, &key, &s->ev, BPF_ANY);
		return 0;
	}
	return gen_decide(hook);
}

/* ctx: the program's context (Post stack traces) */
static __always_inline int gen_enter(__u64 ctx, __u32 hook_id, struct gen_hook *hook)
{
	struct gen_scratch *s = gen_scratch();

	if (!s)
		return 0;
	s->ctx = ctx; /* a stage takes scalars and sized memory: the context's address goes through the scratch */
	return gen_deliver((void *)ctx, gen_enter_stage(hook_id, hook));
}

/* the return stage of a hook: the entry's event from gen_inflight, the return value, matchReturnArgs, the
 * returnArgAction, the actions */
GEN_STAGE int gen_exit_stage(__s64 ret, struct gen_hook *exit_hook)
{
	__u32 zero = 0, entry_id, si;
	__u64 key;
	struct gen_event *saved;
	struct gen_scratch *s;
	struct gen_hook *hook;

	if (!exit_hook)
		return 0;
	entry_id = exit_hook->pair;
	key = gen_inflight_key(entry_id);
	saved = bpf_map_lookup_elem(&gen_inflight, &key);
	if (!saved)
		return 0;
	s = bpf_map_lookup_elem(&gen_heap, &zero);
	hook = bpf_map_lookup_elem(&gen_hooks, &entry_id);
	if (!s || !hook) {
		bpf_map_delete_elem(&gen_inflight, &key);
		return 0;
	}
	bpf_probe_read_kernel(&s->ev, sizeof(s->ev), saved);
	bpf_map_delete_elem(&gen_inflight, &key);
	s->rev_done = 0;
	s->share = 0; /* the event is the entry's, not what this invocation's hooks read and reversed */
	s->rev_shared = 0;
	s->ev.ret = ret;
	s->ev.flags |= GEF_RETURN;
	if ((hook->flags & GHF_RET_SOCK) && ret && hook->ret_slot < GEN_MAX_ARGS) {
		/* the returned sock is new (sk_alloc, openreq child): an entry for its address is a freed sock's,
		 * so the event keeps the returning process */
		struct proc_key caller = s->ev.key;
		__u32 flags = s->ev.flags;

		gen_read_sock(s, hook->ret_slot, (struct sock *)ret);
		s->ev.key = caller;
		s->ev.flags = flags;
	}
	si = s->ev.selector;
	if (si < GEN_MAX_SELECTORS && (hook->sel[GEN_BOUND(si, GEN_MAX_SELECTORS)].flags & GSF_HAS_RET) &&
	    !gen_sel_filters(&hook->sel[GEN_BOUND(si, GEN_MAX_SELECTORS)], 1))
		return 0;
	if ((hook->flags & (GHF_RET_TRACKSOCK | GHF_RET_UNTRACKSOCK)) && ret) { /* returnArgAction */
		__u64 sk = (__u64)ret;

		if (hook->flags & GHF_RET_TRACKSOCK)
			gen_track_sock(hook, s, sk);
		else
			bpf_map_delete_elem(&gen_socktrack, &sk);
	}
	return gen_decide(hook);
}

/* ctx: the program's context (Post stack traces) */
static __always_inline int gen_exit(__s64 ret, struct gen_hook *exit_hook, void *ctx)
{
	return gen_deliver(ctx, gen_exit_stage(ret, exit_hook));
}
