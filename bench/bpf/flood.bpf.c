// SPDX-License-Identifier: GPL-2.0
/*
 * Benchmark-only event source: synthetic process records at rates real fork/exec cannot reach.
 *
 * Each getppid() made by the benchmark driver (its tgid is the rodata target_tgid) emits a batch of
 * synthetic exec (+ exit) record pairs into the `events` ring buffer, in exactly the layouts the
 * process sensor sends (struct exec_event with a data[] tail, struct exit_event; sensors/bpf/process.h).
 *
 * The benchmark opens this object and, before load, reuses the agent's pinned `events` and
 * `lanner_lost` maps, so the agent consumes these records like real ones and every failed reservation
 * is counted in the agent's own loss counter (status: ringbuf.lost_total). Loaded without reuse, the
 * object has a ring buffer of its own (the raw-drain baseline).
 *
 * Every record gets a distinct synthetic pid (pid_base + counter; real pids are < 2^22) and the
 * parent is the driver process (ppid = target_tgid, parent ktime 0: the agent resolves the pid's
 * current identity, which its /proc seeding knows).
 *
 * Records are submitted as the process sensor submits them (lanner_wakeup_flags): the reader is woken only
 * when the ring's unread data crosses 1/8 of it, otherwise it drains on its own cadence.
 */
#include <lanner/common.bpf.h>
#include "../../sensors/bpf/process.h"

char LICENSE[] SEC("license") = "GPL";

/* set by the loader before load */
const volatile __u32 target_tgid = 0;
const volatile __u32 pid_base = 10000000;

#define FLOOD_EXITS (1 << 0) /* emit an exit after each exec (a pair); else exec only (processes stay live) */

/* runtime knobs, changed by the driver between steps: slot 0 = pairs per getppid(), slot 1 = flags */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} flood_cfg SEC(".maps");

/* records submitted (slot 0: exec, 1: exit) and getppid() calls seen (slot 2), per CPU */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} flood_stats SEC(".maps");

/* next synthetic pid; only the (single-threaded) driver triggers the program */
__u32 flood_counter = 0;

/* data[] tail: filename, exe, cwd, argv (NUL separated, no trailing NUL) */
#define T_FILENAME "/usr/bin/true"
#define T_EXE "/usr/bin/true"
#define T_CWD "/tmp"
#define T_ARGS "/usr/bin/true\0--flood\0bench"
#define L_FILENAME (sizeof(T_FILENAME) - 1)
#define L_EXE (sizeof(T_EXE) - 1)
#define L_CWD (sizeof(T_CWD) - 1)
#define L_ARGS (sizeof(T_ARGS) - 1)
#define TAIL_LEN (L_FILENAME + L_EXE + L_CWD + L_ARGS)

struct flood_ctx {
	__u32 flags;
	__u32 ppid;
	__u64 cgroup_id;
	__u32 cpu;
	__u32 submitted_exec;
	__u32 submitted_exit;
};

static __always_inline void bump(__u32 slot, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&flood_stats, &slot);

	if (v)
		*v += n;
}

static long emit_one(__u64 i, void *data)
{
	struct flood_ctx *c = data;
	struct exec_event *ev;
	struct exit_event *xt;
	__u32 pid = pid_base + flood_counter++;
	__u64 ktime = bpf_ktime_get_ns();
	char *p;

	ev = bpf_ringbuf_reserve(&events, sizeof(*ev) + TAIL_LEN, 0);
	if (!ev) {
		lanner_count_lost(LANNER_OP_EXEC);
	} else {
		__builtin_memset(ev, 0, sizeof(*ev));
		ev->hdr.op = LANNER_OP_EXEC;
		ev->hdr.cpu = c->cpu;
		ev->hdr.ktime = ktime;
		ev->key.pid = pid;
		ev->key.ktime = ktime;
		ev->parent.pid = c->ppid; /* parent ktime 0: resolved by pid */
		ev->tid = pid;
		ev->ppid = c->ppid;
		ev->nspid = pid;
		ev->cgroup_id = c->cgroup_id;
		ev->exe_ino = 4242;
		ev->creds.auid = 0xffffffff;
		ev->creds.cap_permitted = 0x1ffffffffffULL;
		ev->creds.cap_effective = 0x1ffffffffffULL;
		ev->ns.uts = 0xf0000001;
		ev->ns.ipc = 0xf0000002;
		ev->ns.mnt = 0xf0000003;
		ev->ns.pid = 0xf0000004;
		ev->ns.pid_for_children = 0xf0000004;
		ev->ns.net = 0xf0000005;
		ev->ns.cgroup = 0xf0000006;
		ev->ns.user = 0xf0000007;
		ev->args_size = L_ARGS + 1;
		ev->filename_len = L_FILENAME;
		ev->exe_len = L_EXE;
		ev->cwd_len = L_CWD;
		ev->args_len = L_ARGS;
		p = (char *)(ev + 1);
		__builtin_memcpy(p, T_FILENAME, L_FILENAME);
		__builtin_memcpy(p + L_FILENAME, T_EXE, L_EXE);
		__builtin_memcpy(p + L_FILENAME + L_EXE, T_CWD, L_CWD);
		__builtin_memcpy(p + L_FILENAME + L_EXE + L_CWD, T_ARGS, L_ARGS);
		bpf_ringbuf_submit(ev, lanner_wakeup_flags(sizeof(*ev), true));
		c->submitted_exec++;
	}
	if (!(c->flags & FLOOD_EXITS))
		return 0;

	xt = bpf_ringbuf_reserve(&events, sizeof(*xt), 0);
	if (!xt) {
		lanner_count_lost(LANNER_OP_EXIT);
		return 0;
	}
	__builtin_memset(xt, 0, sizeof(*xt));
	xt->hdr.op = LANNER_OP_EXIT;
	xt->hdr.cpu = c->cpu;
	xt->hdr.ktime = bpf_ktime_get_ns();
	xt->key.pid = pid;
	xt->key.ktime = ktime;
	xt->tid = pid;
	xt->exit_code = 0;
	bpf_ringbuf_submit(xt, lanner_wakeup_flags(sizeof(*xt), true));
	c->submitted_exit++;
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int lanner_flood(void *ctx)
{
	__u32 k_batch = 0, k_flags = 1;
	__u32 *batch, *flags;
	struct flood_ctx c = {};

	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	batch = bpf_map_lookup_elem(&flood_cfg, &k_batch);
	flags = bpf_map_lookup_elem(&flood_cfg, &k_flags);
	if (!batch || !flags || !*batch)
		return 0;
	c.flags = *flags;
	c.ppid = target_tgid;
	c.cgroup_id = bpf_get_current_cgroup_id();
	c.cpu = bpf_get_smp_processor_id();
	bpf_loop(*batch, emit_one, &c, 0);
	bump(0, c.submitted_exec);
	bump(1, c.submitted_exit);
	bump(2, 1);
	return 0;
}
