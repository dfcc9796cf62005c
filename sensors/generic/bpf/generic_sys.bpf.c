/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The syscall dispatcher of the TracingPolicy engine: ONE program on the raw syscall tracepoint
 * sys_enter (and one on sys_exit while a hook needs return values) serves every `syscall: true` kprobe,
 * as Falco's modern probe does. The syscall number is looked up in gen_sys_on (an array: inlined, a few
 * instructions) and the program returns at once when no hook watches that syscall; otherwise the
 * arguments are read from pt_regs once (x86-64 ABI: di, si, dx, r10, r8, r9) and every hook listed for
 * the syscall runs. Compared with a program per syscall tracepoint (syscalls/sys_enter_X), this avoids
 * the perf tracepoint dispatch (perf_syscall_enter builds a record, trace_call_bpf).
 *
 * Two flavours of each program; the engine loads one pair: tp_btf (pt_regs read with direct loads,
 * where the kernel has BTF tracepoints) or raw_tp (pt_regs read with bpf_probe_read_kernel).
 *
 * Concurrency: the engine changes a syscall's hook list by writing the inactive buffer of
 * gen_sys_list, then flipping that syscall's buffer bit in gen_sys_on (one byte). Hook ids keep their
 * slot while listed. Every listed id is checked against its gen_hooks entry (same syscall, same
 * direction) before it runs, so a list read during a change can only run or skip a hook of that
 * syscall that is being attached or detached.
 *
 * Prefilter (entry only): a hook every selector of which needs a string argument to start with one of
 * a few prefixes (matchArgs Prefix, or Equal: the value is its own prefix) or to end with one of a few
 * postfixes (Postfix) runs only when the string can. Such hooks of a syscall share the argument (same
 * number, a user string); the list names one of them (pf_hook) and where it keeps the string (pf_slot).
 * Before the hooks, the dispatcher reads it with that hook's own reader (gen_read_arg: the same bytes,
 * length and truncation the hooks' filters see, kept for the hooks that read it the same way) and looks
 * it up ONCE in gen_sys_pf, an LPM trie of every prefix of these hooks under set pf_set (nr and
 * argument number); an entry's value is the slots whose hook has a prefix of the entry's string, so the
 * longest match gives every slot that may match. Postfixes: the same, reversed, under pf_set |
 * GSP_REVERSED, looked up with the string reversed (gen_reverse, as a Postfix filter does; the hooks then
 * keep that reversal: gen_rev_made). Slots outside both and pf_always are skipped. An unreadable or empty string, or a pf_hook that
 * is not (or no longer) this syscall's, runs every slot. The engine writes a prefix's new value before
 * the list that needs it and deletes an entry after the list that no longer needs it: for a hook that
 * stays listed, every entry along its strings' paths holds its slot in both the old and the new trie.
 */
#include "generic_core.bpf.h"

#define GEN_TS_COMPAT 0x0002 /* arch/x86/include/asm/thread_info.h: a 32-bit syscall is running */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GEN_SYS_NR);
	__type(key, __u32);
	__type(value, __u32);
} gen_sys_on SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GEN_SYS_NR * 4);
	__type(key, __u32);
	__type(value, struct gen_sys_hooks);
} gen_sys_list SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, GEN_SYS_PF_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct gen_str);
	__type(value, __u64);
} gen_sys_pf SEC(".maps");

/* the prefilter's counters (per CPU, summed by the engine: PolicyEngine.sys_prefilter_stats) */
struct gen_sys_pf_stats {
	__u64 calls;   /* syscalls whose entry list has a prefilter */
	__u64 skipped; /* listed hooks not run: the string cannot match */
	__u64 all;     /* calls that ran every hook: the string unreadable or empty, pf_hook stale */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_sys_pf_stats);
} gen_sys_pf_stat SEC(".maps");

struct gen_sys_ctx {
	struct gen_sys_hooks *list;
	__u64 run;   /* the slots to run (the prefilter's verdict) */
	__u64 skipped;
	void *ctx;   /* the program's context: bpf_get_stackid (Post stack traces) */
	__s64 ret;
	__u32 sysnr; /* nr + 1 */
	__u32 pad;
};

static long gen_sys_enter_step(__u32 k, void *data)
{
	struct gen_sys_ctx *c = data;
	struct gen_hook *hook;
	__u32 id;

	if (k >= GEN_SYS_HOOKS)
		return 1;
	id = c->list->ids[GEN_BOUND(k, GEN_SYS_HOOKS)];
	if (!id)
		return 0;
	if (!((c->run >> k) & 1)) {
		c->skipped++;
		return 0;
	}
	hook = bpf_map_lookup_elem(&gen_hooks, &id);
	if (!hook || hook->sysnr != c->sysnr || (hook->flags & (GHF_EXIT | GHF_SYSCALL)) != GHF_SYSCALL)
		return 0;
	gen_enter((__u64)c->ctx, id, hook); /* the args come from sysargs (GHF_SYSCALL), never from ctx */
	return 0;
}

static long gen_sys_exit_step(__u32 k, void *data)
{
	struct gen_sys_ctx *c = data;
	struct gen_hook *hook;
	__u32 id;

	if (k >= GEN_SYS_HOOKS)
		return 1;
	id = c->list->ids[GEN_BOUND(k, GEN_SYS_HOOKS)];
	if (!id)
		return 0;
	hook = bpf_map_lookup_elem(&gen_hooks, &id);
	if (!hook || hook->sysnr != c->sysnr || (hook->flags & (GHF_EXIT | GHF_SYSCALL)) != (GHF_EXIT | GHF_SYSCALL))
		return 0;
	gen_exit((__s64)gen_extend((__u64)c->ret, hook->ret_size, hook->ret_signed), hook, c->ctx);
	return 0;
}

/* the hook list of syscall nr in direction dir (0 enter, 1 exit), or NULL when nothing watches it */
static __always_inline struct gen_sys_hooks *gen_sys_list_of(__u32 nr, __u32 dir)
{
	__u32 *on = bpf_map_lookup_elem(&gen_sys_on, &nr);
	__u32 v, idx;

	if (!on)
		return NULL;
	v = *(volatile __u32 *)on;
	if (!(v & (dir ? GSO_EXIT : GSO_ENTER)))
		return NULL;
	idx = nr * 4 + dir * 2 + ((v & (dir ? GSO_EXIT_BUF : GSO_ENTER_BUF)) ? 1 : 0);
	return bpf_map_lookup_elem(&gen_sys_list, &idx);
}

/* the slots that may match this call (see Prefilter above): every slot unless the list has a prefilter */
static __always_inline __u64 gen_sys_prefilter(struct gen_scratch *s, struct gen_sys_hooks *list, __u32 nr)
{
	__u32 id = list->pf_hook, slot = list->pf_slot, len;
	struct gen_hook *hook;
	struct gen_str *str;
	__u64 *bits, run;

	if (!id)
		return ~0ULL;
	hook = bpf_map_lookup_elem(&gen_hooks, &id);
	if (!hook || hook->sysnr != nr + 1 || (hook->flags & (GHF_EXIT | GHF_SYSCALL)) != GHF_SYSCALL ||
	    slot >= GEN_MAX_ARGS || slot >= hook->nargs)
		return ~0ULL;
	slot = GEN_BOUND(slot, GEN_MAX_ARGS);
	if (hook->args[slot].type != GA_USTR || list->pf_set != ((nr << GEN_SYS_PF_ARG_BITS) | hook->args[slot].off))
		return ~0ULL; /* not the string the trie's prefixes are for */
	s->share = 1; /* as a dispatcher hook reads it: later hooks reading it the same way keep it */
	s->ev.trunc = 0;
	gen_read_arg(hook, 0, slot); /* a dispatcher hook's reader takes its args from sysargs, not ctx */
	len = s->ev.lens[slot];
	if (!len || len > GEN_STR_MAX)
		return ~0ULL; /* unreadable (or empty): no verdict */
	str = &s->ev.str[slot];
	str->prefixlen = 16 + 8 * len;
	str->set_hi = list->pf_set >> 8;
	str->set_lo = list->pf_set & 0xff;
	run = list->pf_always;
	if (list->pf_kinds & GSP_PREFIX) {
		bits = bpf_map_lookup_elem(&gen_sys_pf, str);
		run |= bits ? *bits : 0;
	}
	if (list->pf_kinds & GSP_POSTFIX) {
		str = &s->rev[slot];
		gen_reverse(str, &s->ev.str[slot], len);
		gen_rev_made(s, slot);
		str->prefixlen = 16 + 8 * len;
		str->set_hi = (list->pf_set | GSP_REVERSED) >> 8;
		str->set_lo = (list->pf_set | GSP_REVERSED) & 0xff;
		bits = bpf_map_lookup_elem(&gen_sys_pf, str);
		run |= bits ? *bits : 0;
	}
	return run;
}

static __always_inline int gen_sys_run_enter(void *ctx, struct gen_sys_hooks *list, __u32 nr,
					     struct gen_scratch *s)
{
	struct gen_sys_ctx c = { .list = list, .ctx = ctx, .sysnr = nr + 1 };
	__u32 n = list->n;

	c.run = gen_sys_prefilter(s, list, nr);
	if (n > GEN_SYS_HOOKS)
		n = GEN_SYS_HOOKS;
	bpf_loop(n, gen_sys_enter_step, &c, 0);
	if (list->pf_hook) {
		__u32 zero = 0;
		struct gen_sys_pf_stats *st = bpf_map_lookup_elem(&gen_sys_pf_stat, &zero);

		if (st) {
			st->calls++;
			st->skipped += c.skipped;
			st->all += c.run == ~0ULL;
		}
	}
	return 0;
}

static __always_inline int gen_sys_run_exit(void *ctx, struct gen_sys_hooks *list, __u32 nr, long ret)
{
	struct gen_sys_ctx c = { .list = list, .ctx = ctx, .run = ~0ULL, .ret = ret, .sysnr = nr + 1 };
	__u32 n = list->n;

	if (n > GEN_SYS_HOOKS)
		n = GEN_SYS_HOOKS;
	bpf_loop(n, gen_sys_exit_step, &c, 0);
	return 0;
}

static __always_inline struct gen_scratch *gen_sys_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&gen_heap, &zero);
}

/* ------------------------------------------------------------------------- tp_btf: direct loads */
SEC("tp_btf/sys_enter")
int BPF_PROG(gen_sys_enter, struct pt_regs *regs, long id)
{
	struct gen_sys_hooks *list;
	struct task_struct *task;
	struct gen_scratch *s;

	if ((__u64)id >= GEN_SYS_NR)
		return 0;
	list = gen_sys_list_of((__u32)id, 0);
	if (!list || !regs)
		return 0;
	task = bpf_get_current_task_btf();
	if (bpf_core_field_exists(task->thread_info.status) && (task->thread_info.status & GEN_TS_COMPAT))
		return 0; /* a 32-bit syscall: other numbers (the syscall tracepoints ignore them too) */
	s = gen_sys_scratch();
	if (!s)
		return 0;
	s->sysinv++; /* a new invocation: what earlier ones read is not shared with its hooks */
	s->sysargs[0] = regs->di;
	s->sysargs[1] = regs->si;
	s->sysargs[2] = regs->dx;
	s->sysargs[3] = regs->r10;
	s->sysargs[4] = regs->r8;
	s->sysargs[5] = regs->r9;
	return gen_sys_run_enter(ctx, list, (__u32)id, s);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(gen_sys_exit, struct pt_regs *regs, long ret)
{
	struct gen_sys_hooks *list;
	struct task_struct *task;
	__u64 nr;

	if (!regs)
		return 0;
	nr = regs->orig_ax;
	if (nr >= GEN_SYS_NR)
		return 0;
	list = gen_sys_list_of((__u32)nr, 1);
	if (!list)
		return 0;
	task = bpf_get_current_task_btf();
	if (bpf_core_field_exists(task->thread_info.status) && (task->thread_info.status & GEN_TS_COMPAT))
		return 0;
	return gen_sys_run_exit(ctx, list, (__u32)nr, ret);
}

/* ------------------------------------------------------------------- raw_tp: bpf_probe_read_kernel */
static __always_inline bool gen_sys_compat_raw(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return bpf_core_field_exists(task->thread_info.status) &&
	       (BPF_CORE_READ(task, thread_info.status) & GEN_TS_COMPAT);
}

SEC("raw_tp/sys_enter")
int gen_sys_enter_r(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	__u64 id = ctx->args[1];
	struct gen_sys_hooks *list;
	struct gen_scratch *s;

	if (id >= GEN_SYS_NR)
		return 0;
	list = gen_sys_list_of((__u32)id, 0);
	if (!list || gen_sys_compat_raw())
		return 0;
	s = gen_sys_scratch();
	if (!s)
		return 0;
	s->sysinv++;
	s->sysargs[0] = BPF_CORE_READ(regs, di);
	s->sysargs[1] = BPF_CORE_READ(regs, si);
	s->sysargs[2] = BPF_CORE_READ(regs, dx);
	s->sysargs[3] = BPF_CORE_READ(regs, r10);
	s->sysargs[4] = BPF_CORE_READ(regs, r8);
	s->sysargs[5] = BPF_CORE_READ(regs, r9);
	return gen_sys_run_enter(ctx, list, (__u32)id, s);
}

SEC("raw_tp/sys_exit")
int gen_sys_exit_r(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	struct gen_sys_hooks *list;
	__u64 nr = BPF_CORE_READ(regs, orig_ax);

	if (nr >= GEN_SYS_NR)
		return 0;
	list = gen_sys_list_of((__u32)nr, 1);
	if (!list || gen_sys_compat_raw())
		return 0;
	return gen_sys_run_exit(ctx, list, (__u32)nr, (long)ctx->args[1]);
}
