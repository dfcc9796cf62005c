/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Generic fentry/fexit programs of the TracingPolicy engine (policy `fentries`). A trampoline program's
 * attach target is set before load, so the engine loads one instance per hooked function and program
 * (the other program's autoload off), every map shared by fd and the hook id in .rodata. Arguments come
 * from the BTF context array; fexit reads the return value with bpf_get_func_ret.
 */
#include "generic_core.bpf.h"

const volatile __u32 cfg_hook_id = 0;

SEC("fentry")
int generic_fentry(unsigned long long *ctx)
{
	__u32 hook_id = cfg_hook_id;
	struct gen_hook *hook = bpf_map_lookup_elem(&gen_hooks, &hook_id);

	if (!hook)
		return 0;
	return gen_enter((__u64)ctx, hook_id, hook);
}

SEC("fexit")
int generic_fexit(unsigned long long *ctx)
{
	__u32 hook_id = cfg_hook_id;
	struct gen_hook *hook = bpf_map_lookup_elem(&gen_hooks, &hook_id);
	__u64 ret = 0;

	if (!hook || !(hook->flags & GHF_EXIT))
		return 0;
	bpf_get_func_ret(ctx, &ret);
	return gen_exit((__s64)gen_extend(ret, hook->ret_size, hook->ret_signed), hook, ctx); /* ret_size 0: as is */
}
