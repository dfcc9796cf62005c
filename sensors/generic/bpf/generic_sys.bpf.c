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

struct gen_sys_ctx {
	struct gen_sys_hooks *list;
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

static __always_inline int gen_sys_run_enter(void *ctx, struct gen_sys_hooks *list, __u32 nr)
{
	struct gen_sys_ctx c = { .list = list, .ctx = ctx, .sysnr = nr + 1 };
	__u32 n = list->n;

	if (n > GEN_SYS_HOOKS)
		n = GEN_SYS_HOOKS;
	bpf_loop(n, gen_sys_enter_step, &c, 0);
	return 0;
}

static __always_inline int gen_sys_run_exit(void *ctx, struct gen_sys_hooks *list, __u32 nr, long ret)
{
	struct gen_sys_ctx c = { .list = list, .ctx = ctx, .ret = ret, .sysnr = nr + 1 };
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
	return gen_sys_run_enter(ctx, list, (__u32)id);
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
	return gen_sys_run_enter(ctx, list, (__u32)id);
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
