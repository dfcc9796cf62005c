/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Stage 2 of the generic policy datapath: selectors. gen_sel_process checks a selector's conditions on the
 * current process (pids, binaries, namespaces, capabilities and their changes since exec), gen_sel_filters
 * its filters on the event's arguments (gen_filters.bpf.h). Each is verified on its own (GEN_STAGE).
 */
#pragma once

#include "gen_filters.bpf.h"

static __always_inline __u32 gen_ns_inum(struct task_struct *task, __u32 type)
{
	struct nsproxy *nsp = BPF_CORE_READ(task, nsproxy);

	switch (type) {
	case GNS_UTS: return BPF_CORE_READ(nsp, uts_ns, ns.inum);
	case GNS_IPC: return BPF_CORE_READ(nsp, ipc_ns, ns.inum);
	case GNS_MNT: return BPF_CORE_READ(nsp, mnt_ns, ns.inum);
	case GNS_PID: {
		struct pid *p = BPF_CORE_READ(task, thread_pid);
		__u32 level = BPF_CORE_READ(p, level);

		return BPF_CORE_READ(p, numbers[level].ns, ns.inum);
	}
	case GNS_PID_FOR_CHILDREN: return BPF_CORE_READ(nsp, pid_ns_for_children, ns.inum);
	case GNS_NET: return BPF_CORE_READ(nsp, net_ns, ns.inum);
	case GNS_TIME: return BPF_CORE_READ(nsp, time_ns, ns.inum);
	case GNS_TIME_FOR_CHILDREN: return BPF_CORE_READ(nsp, time_ns_for_children, ns.inum);
	case GNS_CGROUP: return BPF_CORE_READ(nsp, cgroup_ns, ns.inum);
	case GNS_USER: return BPF_CORE_READ(task, cred, user_ns, ns.inum);
	}
	return 0;
}

static __always_inline bool gen_pid_in(struct gen_pids *e, __u32 pid)
{
	bool hit = false;

#pragma unroll
	for (int k = 0; k < GEN_MAX_PIDS; k++)
		if (k < e->n && e->vals[k] == pid)
			hit = true;
	return hit;
}

/* one matchPIDs entry */
static __always_inline bool gen_check_pid_entry(struct gen_pids *e)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	bool hit;

	if (e->flags & GPF_NSPID) {
		struct pid *p = BPF_CORE_READ(task, group_leader, thread_pid);
		__u32 level = BPF_CORE_READ(p, level);

		pid = BPF_CORE_READ(p, numbers[level].nr);
	}
	hit = gen_pid_in(e, pid);
	if (!hit && (e->flags & GPF_FOLLOW) && !(e->flags & GPF_NSPID)) {
		__u32 cur = pid;

#pragma unroll
		for (int l = 0; l < GEN_PARENT_LEVELS; l++) {
			struct execve_entry *x = bpf_map_lookup_elem(&execve_map, &cur);

			if (!x || hit)
				break;
			cur = x->parent.pid;
			if (!cur)
				break;
			hit = gen_pid_in(e, cur);
		}
	}
	return e->op == GOP_IN ? hit : !hit;
}

/* matchPIDs: every entry holds (Tetragon ANDs them) */
static __always_inline bool gen_check_pids(struct gen_selector *sel)
{
	if (!gen_check_pid_entry(&sel->pids[0]))
		return false;
	return !sel->pids[1].op || gen_check_pid_entry(&sel->pids[1]);
}

#define GEN_BIN_DONE (1U << 30)    /* s->rev_done: s->bin holds the current binary */
#define GEN_BINREV_DONE (1U << 31) /* s->rev_done: s->binrev holds it reversed */

/* matchBinaries followChildren: an ancestor's binary (execve_map, up to GEN_PARENT_LEVELS parents) is in
 * the set; the ancestor's binary is copied into s->binrev (Postfix, which needs it, is not allowed with
 * followChildren) */
static __always_inline bool gen_ancestor_binary(struct gen_scratch *s, struct gen_selector *sel, bool lpm)
{
	__u32 cur = bpf_get_current_pid_tgid() >> 32;
	bool hit = false;

#pragma unroll
	for (int l = 0; l < GEN_PARENT_LEVELS; l++) {
		struct execve_entry *e = bpf_map_lookup_elem(&execve_map, &cur);
		__u32 blen;

		if (!e || hit)
			break;
		cur = e->parent.pid;
		if (!cur)
			break;
		e = bpf_map_lookup_elem(&execve_map, &cur);
		if (!e)
			break;
		blen = e->binary_len;
		if (blen > GEN_STR_MAX - 1)
			blen = GEN_STR_MAX - 1;
		__builtin_memset(&s->binrev, 0, sizeof(s->binrev));
		s->rev_done &= ~GEN_BINREV_DONE; /* binrev no longer holds the current binary reversed */
		bpf_probe_read_kernel(s->binrev.s, blen & 255, e->binary);
		hit = lpm ? gen_str_in_lpm(s, &s->binrev, blen, sel->bin_set)
			  : gen_str_in_set(s, &s->binrev, blen, false, sel->bin_set);
	}
	return hit;
}

/* the current process's binary into s->bin (zero padded: a hash key), once per event */
static __always_inline void gen_load_binary(struct gen_scratch *s)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct execve_entry *e;
	__u32 blen;

	if (s->rev_done & GEN_BIN_DONE)
		return;
	s->rev_done |= GEN_BIN_DONE;
	if (s->share && s->bin_inv == s->sysinv + 1)
		return; /* an earlier hook of this dispatcher invocation read it */
	s->bin_inv = s->share ? s->sysinv + 1 : 0;
	__builtin_memset(&s->bin, 0, sizeof(s->bin));
	s->bin_len = 0;
	e = bpf_map_lookup_elem(&execve_map, &tgid);
	if (!e)
		return;
	blen = e->binary_len;
	if (blen > GEN_STR_MAX - 1)
		blen = GEN_STR_MAX - 1;
	bpf_probe_read_kernel(s->bin.s, blen & 255, e->binary);
	s->bin_len = blen;
}

static __always_inline bool gen_check_binary(struct gen_scratch *s, struct gen_selector *sel)
{
	__u32 len;
	bool hit = false;

	gen_load_binary(s);
	len = s->bin_len;

	switch (sel->bin_op) {
	case GOP_IN:
	case GOP_NOTIN:
		hit = gen_str_in_set(s, &s->bin, len, false, sel->bin_set);
		if (!hit && sel->bin_follow)
			hit = gen_ancestor_binary(s, sel, false);
		break;
	case GOP_PREFIX:
	case GOP_NOTPREFIX:
		hit = gen_str_in_lpm(s, &s->bin, len, sel->bin_set);
		if (!hit && sel->bin_follow)
			hit = gen_ancestor_binary(s, sel, true);
		break;
	case GOP_POSTFIX:
	case GOP_NOTPOSTFIX:
		if (!(s->rev_done & GEN_BINREV_DONE)) {
			gen_reverse(&s->binrev, &s->bin, len);
			s->rev_done |= GEN_BINREV_DONE;
		}
		hit = gen_str_in_lpm(s, &s->binrev, len, sel->bin_set);
		break;
	default:
		return true;
	}
	if (sel->bin_op == GOP_NOTIN || sel->bin_op == GOP_NOTPREFIX || sel->bin_op == GOP_NOTPOSTFIX)
		hit = !hit;
	return hit;
}

/* the current task's capability set of type t (0 effective, 1 inheritable, 2 permitted) */
static __always_inline __u64 gen_task_caps(struct task_struct *task, __u32 t)
{
	const struct cred *cred = BPF_CORE_READ(task, cred);
	const kernel_cap_t *cap;
	__u64 caps = 0;

	/* kernel_cap_t is a u64 "val" since 6.3 and a u32 cap[2] before (same 8 bytes): read the field
	 * whole, by its relocated offset, so the program loads on both (Debian 6.1 has the array) */
	if (t == GCT_INHERITABLE)
		cap = __builtin_preserve_access_index(&cred->cap_inheritable);
	else if (t == GCT_PERMITTED)
		cap = __builtin_preserve_access_index(&cred->cap_permitted);
	else
		cap = __builtin_preserve_access_index(&cred->cap_effective);
	bpf_probe_read_kernel(&caps, sizeof(caps), cap);
	return caps;
}

/* isNamespaceCapability: only tasks outside the host user namespace (userns = its inode) */
static __always_inline bool gen_in_userns(struct task_struct *task, __u32 userns)
{
	return userns && BPF_CORE_READ(task, cred, user_ns, ns.inum) == userns;
}

static __always_inline bool gen_check_caps(struct gen_selector *sel)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	bool hit;

	if (gen_in_userns(task, sel->cap_userns))
		return false;
	hit = (gen_task_caps(task, sel->cap_type) & sel->cap_mask) != 0;
	return sel->cap_op == GOP_IN ? hit : !hit;
}

/* matchNamespaceChanges / matchCapabilityChanges: the state at exec lives in the process's
 * execve_map entry (process sensor); a process without it (seeded from /proc at agent start) gets the
 * current state now, so the filters report changes from here on */
static __always_inline void gen_take_ns(struct execve_entry *e, struct task_struct *task)
{
	__u32 *ns = (__u32 *)&e->exec_ns;

#pragma unroll
	for (int t = 0; t <= GNS_USER; t++)
		ns[t] = gen_ns_inum(task, t);
}

static __always_inline void gen_take_caps(struct execve_entry *e, struct task_struct *task)
{
#pragma unroll
	for (int t = 0; t < 3; t++)
		e->exec_caps[t] = gen_task_caps(task, t);
}

static __always_inline struct execve_entry *gen_exec_state(struct task_struct *task, bool *fresh)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct execve_entry *e = bpf_map_lookup_elem(&execve_map, &tgid);

	*fresh = false;
	if (e && !(e->flags & LANNER_ENTRY_EXEC_STATE)) {
		gen_take_ns(e, task);
		gen_take_caps(e, task);
		e->flags |= LANNER_ENTRY_EXEC_STATE;
		*fresh = true;
	}
	return e;
}

/* a namespace of nsch_mask differs from the one recorded at exec (or at the last reported change) */
static __always_inline bool gen_check_ns_changes(struct gen_selector *sel)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	bool fresh;
	struct execve_entry *e = gen_exec_state(task, &fresh);
	__u32 *ns;

	if (!e || fresh)
		return false;
	ns = (__u32 *)&e->exec_ns;
#pragma unroll
	for (int t = 0; t <= GNS_USER; t++)
		if ((sel->nsch_mask & (1 << t)) && ns[t] && ns[t] != gen_ns_inum(task, t))
			return true;
	return false;
}

/* In: one of the listed capabilities of capch_type was gained or lost since exec; NotIn: only others */
static __always_inline bool gen_check_cap_changes(struct gen_selector *sel)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	bool fresh;
	struct execve_entry *e;
	__u32 t = sel->capch_type;
	__u64 was, now;

	if (gen_in_userns(task, sel->capch_userns) || t > GCT_PERMITTED)
		return false;
	e = gen_exec_state(task, &fresh);
	if (!e || fresh)
		return false;
	was = e->exec_caps[t];
	now = gen_task_caps(task, t);
	if ((was ^ now) & sel->capch_mask)
		return sel->capch_op == GOP_IN;
	if (was != now)
		return sel->capch_op == GOP_NOTIN;
	return false;
}

/* after a selector matched on a change: the current state is the new reference, as in Tetragon */
static __always_inline void gen_changes_seen(struct gen_selector *sel)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct execve_entry *e = bpf_map_lookup_elem(&execve_map, &tgid);

	if (!e)
		return;
	if (sel->nsch_op)
		gen_take_ns(e, task);
	if (sel->capch_op)
		gen_take_caps(e, task);
}

static __always_inline bool gen_check_ns(struct gen_selector *sel)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

#pragma unroll
	for (int n = 0; n < GEN_MAX_NS; n++) {
		struct gen_ns *ns = &sel->ns[n];
		__u32 inum;
		bool hit = false;

		if (n >= sel->nns)
			break;
		inum = gen_ns_inum(task, ns->type);
#pragma unroll
		for (int k = 0; k < GEN_MAX_NS_VALUES; k++)
			if (k < ns->nvals && ns->vals[k] == inum)
				hit = true;
		if (ns->op == GOP_NOTIN)
			hit = !hit;
		if (!hit)
			return false;
	}
	return true;
}

/* a matchBinaries NotIn / NotPrefix / NotPostfix: a list of exceptions, which almost every process passes */
static __always_inline bool gen_bin_exception(struct gen_selector *sel)
{
	return sel->bin_op == GOP_NOTIN || sel->bin_op == GOP_NOTPREFIX || sel->bin_op == GOP_NOTPOSTFIX;
}

/* the process conditions of selector sel: matchPIDs, matchBinaries, matchNamespaces, matchCapabilities,
 * matchNamespaceChanges, matchCapabilityChanges. 1: they all hold (or it has none). They need no argument,
 * so the entry stage checks the selective ones first (phase 0) and reads no argument when no selector can
 * match; binary exceptions (phase 1) rarely exclude anything and are checked once the filters matched. */
GEN_STAGE int gen_sel_process(struct gen_selector *sel, __u32 phase)
{
	struct gen_scratch *s = gen_scratch();

	if (!s || !sel)
		return 0;
	if (phase)
		return !sel->bin_op || !gen_bin_exception(sel) || gen_check_binary(s, sel);
	if (sel->pids[0].op && !gen_check_pids(sel))
		return 0;
	if (sel->bin_op && !gen_bin_exception(sel) && !gen_check_binary(s, sel))
		return 0;
	if (sel->nns && !gen_check_ns(sel))
		return 0;
	if (sel->cap_op && !gen_check_caps(sel))
		return 0;
	if (sel->nsch_op && !gen_check_ns_changes(sel))
		return 0;
	if (sel->capch_op && !gen_check_cap_changes(sel))
		return 0;
	return 1;
}

/* every filter of sel of this phase (phase_ret 0: matchArgs at the entry, 1: matchReturnArgs) holds */
GEN_STAGE int gen_sel_filters(struct gen_selector *sel, __u32 phase_ret)
{
	if (!sel)
		return 0;
#pragma unroll
	for (int j = 0; j < GEN_MAX_FILTERS; j++) {
		if (j >= sel->nfilters)
			break;
		if (gen_filter(&sel->filters[j], phase_ret) == GEN_FILTER_MISS)
			return 0;
	}
	return 1;
}

/* a selector matched: a change it matched on is the new reference (matchNamespaceChanges / CapabilityChanges) */
GEN_STAGE int gen_sel_matched(struct gen_selector *sel)
{
	if (sel && (sel->nsch_op || sel->capch_op))
		gen_changes_seen(sel);
	return 0;
}
