/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Generic uprobe/uretprobe programs of the TracingPolicy engine: attached once per symbol with the
 * hook id as bpf_cookie; arguments are read from pt_regs. Shares every map with generic_tp.bpf.o
 * (the engine reuses them by fd).
 */
#include "generic_core.bpf.h"

SEC("uprobe")
int generic_uprobe(struct pt_regs *ctx)
{
	__u32 hook_id = (__u32)bpf_get_attach_cookie(ctx);
	struct gen_hook *hook = bpf_map_lookup_elem(&gen_hooks, &hook_id);

	if (!hook)
		return 0;
	return gen_enter((__u64)ctx, hook_id, hook);
}

SEC("uretprobe")
int generic_uretprobe(struct pt_regs *ctx)
{
	__u32 hook_id = (__u32)bpf_get_attach_cookie(ctx);
	struct gen_hook *hook = bpf_map_lookup_elem(&gen_hooks, &hook_id);

	if (!hook || !(hook->flags & GHF_EXIT))
		return 0;
	return gen_exit((__s64)PT_REGS_RC(ctx), hook, ctx);
}
