/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Generic BPF LSM program of the TracingPolicy engine. The attach target (the LSM hook) is set before
 * load, so the engine loads one instance per hooked function, with every map shared by fd and its
 * hook id in .rodata. Arguments come from the BTF context array; Override is the return value.
 */
#include "generic_core.bpf.h"

const volatile __u32 cfg_hook_id = 0;

SEC("lsm")
int generic_lsm(unsigned long long *ctx)
{
	__u32 hook_id = cfg_hook_id, zero = 0;
	struct gen_hook *hook = bpf_map_lookup_elem(&gen_hooks, &hook_id);
	struct gen_scratch *s;
	__s64 rc;

	if (!hook)
		return 0;
	gen_enter((__u64)ctx, hook_id, hook);
	s = bpf_map_lookup_elem(&gen_heap, &zero);
	if (!s || !s->override_set)
		return 0;
	rc = s->override_ret;
	if (rc < -4095 || rc > 0)
		rc = -1; /* EPERM: an LSM hook returns 0 or -errno */
	return (int)rc;
}
