/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Override on a kernel-function kprobe: the generic kprobe decides (its selector matched, mode
 * enforce) and stores argError per pid_tgid in gen_override; this fmod_ret program, attached to the
 * same function (target set before load: one instance per function), returns it instead of running
 * the function. Shares gen_override with generic_tp.bpf.o by fd.
 */
#include "generic_core.bpf.h"

SEC("fmod_ret")
int generic_fmodret(unsigned long long *ctx)
{
	__u64 key = bpf_get_current_pid_tgid();
	__s64 *rc = bpf_map_lookup_elem(&gen_override, &key);
	__s64 v;

	if (!rc)
		return 0;
	v = *rc;
	bpf_map_delete_elem(&gen_override, &key);
	return (int)v;
}
