/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Generic BTF tracepoint program of the TracingPolicy engine (policy `tracepoints` with `raw: true`).
 * The attach target (the tracepoint's name) is set before load, so the engine loads one instance per
 * hooked tracepoint, with every map shared by fd and its hook id in .rodata. Arguments are the
 * tracepoint's TP_PROTO arguments, from the BTF context array (index = argument number).
 */
#include "generic_core.bpf.h"

const volatile __u32 cfg_hook_id = 0;

SEC("tp_btf")
int generic_tp_btf(unsigned long long *ctx)
{
	__u32 hook_id = cfg_hook_id;
	struct gen_hook *hook = bpf_map_lookup_elem(&gen_hooks, &hook_id);

	if (!hook)
		return 0;
	return gen_enter((__u64)ctx, hook_id, hook);
}
