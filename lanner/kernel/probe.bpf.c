/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Kernel feature probe: one tiny program per feature, loaded one at a time by lanner/kernel/probe.py.
 *
 * Every program is harmless: it returns the "do nothing / allow" value of its hook, and the helper
 * probes guard their helper call behind a condition that is never true at run time (the idle task
 * never makes a syscall), so the verifier checks the call but it never runs.
 *
 * Deliberately NOT included: lanner/common.bpf.h. Its 8 MiB ring buffer would be created on every one
 * of the ~20 loads, and on a kernel without ring buffers it would make every probe fail. No program
 * here touches a kernel struct field either: a single CO-RE relocation makes libbpf parse the whole
 * vmlinux BTF for every load of this object, which would dominate the probe's run time.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL"; /* send_signal, override_return and d_path are GPL-only */

#define TC_ACT_OK 0

/* True only for the idle task, which never enters a syscall: makes a call verifiable but dead. */
static __always_inline int never(void)
{
	return bpf_get_current_pid_tgid() == 0;
}

/* ---- program and attach types */

SEC("tp/sched/sched_process_exec")
int probe_tracepoint(void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_process_exec")
int probe_tp_btf(__u64 *ctx)
{
	return 0;
}

SEC("raw_tp/sched_process_exec")
int probe_raw_tp(void *ctx)
{
	return 0;
}

/* kprobe targets are chosen at attach time (the arch syscall wrapper name differs per arch) */
SEC("kprobe")
int probe_kprobe(struct pt_regs *ctx)
{
	return 0;
}

SEC("kretprobe")
int probe_kretprobe(struct pt_regs *ctx)
{
	return 0;
}

SEC("fentry/security_file_open")
int probe_fentry(__u64 *ctx)
{
	return 0;
}

SEC("fexit/security_file_open")
int probe_fexit(__u64 *ctx)
{
	return 0;
}

/* returning 0 from fmod_ret keeps the hooked function's own result */
SEC("fmod_ret/security_file_open")
int probe_fmod_ret(__u64 *ctx)
{
	return 0;
}

/* 0 = allow */
SEC("lsm/file_open")
int probe_lsm(__u64 *ctx)
{
	return 0;
}

SEC("uprobe")
int probe_uprobe(struct pt_regs *ctx)
{
	return 0;
}

SEC("uretprobe")
int probe_uretprobe(struct pt_regs *ctx)
{
	return 0;
}

/* 1 = allow the connect() */
SEC("cgroup/connect4")
int probe_connect4(struct bpf_sock_addr *ctx)
{
	return 1;
}

SEC("tc")
int probe_tc(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("xdp")
int probe_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* attaching an iterator creates a link only; nothing runs until someone reads it */
SEC("iter/task")
int probe_iter_task(struct bpf_iter__task *ctx)
{
	return 0;
}

/* ---- helpers (load only: the verifier decides whether the helper is available) */

/* signal 0 only checks permissions, and the call is dead anyway */
SEC("tp/syscalls/sys_enter_getpgid")
int probe_send_signal(void *ctx)
{
	if (never())
		bpf_send_signal(0);
	return 0;
}

/* attached (kprobe) to the arch's getpgid syscall, an error-injectable function */
SEC("kprobe")
int probe_override_return(struct pt_regs *ctx)
{
	if (never())
		bpf_override_return(ctx, 0);
	return 0;
}

/*
 * bpf_d_path is allowed only on an allowlist of functions. vfs_truncate is on it unconditionally and
 * takes the struct path directly, so no struct field (hence no CO-RE relocation) is needed.
 */
SEC("fentry/vfs_truncate")
int BPF_PROG(probe_d_path, const struct path *path)
{
	char buf[64];

	bpf_d_path((struct path *)path, buf, sizeof(buf));
	return 0;
}

static long loop_step(__u32 index, void *data)
{
	return 1; /* stop after the first iteration */
}

SEC("tp/syscalls/sys_enter_getpgid")
int probe_bpf_loop(void *ctx)
{
	bpf_loop(1, loop_step, NULL, 0);
	return 0;
}

SEC("tp/syscalls/sys_enter_getpgid")
int probe_task_btf(void *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return task ? 0 : 0;
}
