/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Generic kprobe/kretprobe programs of the TracingPolicy engine: attached once per kernel function
 * with the hook id as bpf_cookie; arguments are read from pt_regs (CO-RE). Shares every map with
 * generic_tp.bpf.o (the engine reuses them by fd). Override on a kprobe is decided here and stored
 * in gen_override; generic_fmodret.bpf.o on the same function returns it.
 */
#include "generic_core.bpf.h"

SEC("kprobe")
int generic_kprobe(struct pt_regs *ctx)
{
	__u32 hook_id = (__u32)bpf_get_attach_cookie(ctx);
	struct gen_hook *hook = bpf_map_lookup_elem(&gen_hooks, &hook_id);

	if (!hook)
		return 0;
	return gen_enter((__u64)ctx, hook_id, hook);
}

SEC("kretprobe")
int generic_kretprobe(struct pt_regs *ctx)
{
	__u32 hook_id = (__u32)bpf_get_attach_cookie(ctx);
	struct gen_hook *hook = bpf_map_lookup_elem(&gen_hooks, &hook_id);

	if (!hook || !(hook->flags & GHF_EXIT))
		return 0;
	return gen_exit((__s64)gen_extend(PT_REGS_RC(ctx), hook->ret_size, hook->ret_signed), hook, ctx); /* 0: as is */
}
