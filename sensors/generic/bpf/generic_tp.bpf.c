/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Generic tracepoint program of the TracingPolicy engine: attached once per hook (tracepoint,
 * syscall entry or exit tracepoint) with the hook id as its bpf_cookie. The hook's arguments,
 * selectors and actions come from gen_hooks; see generic_core.bpf.h and docs/policy-engine.md.
 */
#include "generic_core.bpf.h"

SEC("tp")
int generic_tp(void *ctx)
{
	__u32 hook_id = (__u32)bpf_get_attach_cookie(ctx);
	struct gen_hook *hook = bpf_map_lookup_elem(&gen_hooks, &hook_id);
	__u64 raw = 0;

	if (!hook)
		return 0;
	if (hook->flags & GHF_EXIT) {
		bpf_probe_read_kernel(&raw, 8, (char *)ctx + hook->ret_off);
		return gen_exit((__s64)gen_extend(raw, hook->ret_size, hook->ret_signed), hook, ctx);
	}
	return gen_enter((__u64)ctx, hook_id, hook);
}
