// SPDX-License-Identifier: GPL-2.0
/*
 * Process sensor: exec, clone (new processes only) and exit, from the sched tracepoints.
 * One record per event; layouts in process.h.
 */
#include <lanner/common.bpf.h>
#include "process.h"
#include <lanner/path.bpf.h>

char LICENSE[] SEC("license") = "GPL";

#define PF_KTHREAD 0x00200000

/* read-only configuration, set by the loader before load */
const volatile __u32 cfg_args_max = LANNER_ARGS_MAX; /* clamp argv to this many bytes (<= LANNER_ARGS_MAX) */
const volatile __u8 cfg_emit_clone = 1;

/* The live processes' identities (tgid -> key), seeded from /proc by the agent at start. */
#include "execve_map.bpf.h"

/* Per-CPU scratch: the exec record is assembled here and copied to the ring buffer at its real size. */
#define EXEC_DATA_SIZE (LANNER_FILENAME_MAX + 2 * LANNER_PATH_MAX + LANNER_ARGS_MAX) /* exactly what fits; per-CPU values are capped at 32 KiB */
struct exec_scratch {
	struct exec_event ev;
	char data[EXEC_DATA_SIZE];
	struct lanner_path_buf path;
	struct execve_entry entry;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_scratch);
} exec_heap SEC(".maps");

/* anchors so the records appear in BTF for the user-space decoder */
const struct exec_event *_anchor_exec __attribute__((unused));
const struct clone_event *_anchor_clone __attribute__((unused));
const struct exit_event *_anchor_exit __attribute__((unused));

static __always_inline __u64 read_cap(const kernel_cap_t *cap)
{
	__u64 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), cap);
	return v;
}

static __always_inline void fill_creds(struct proc_creds *c, struct task_struct *task)
{
	const struct cred *cred = BPF_CORE_READ(task, cred);

	c->uid = BPF_CORE_READ(cred, uid.val);
	c->gid = BPF_CORE_READ(cred, gid.val);
	c->suid = BPF_CORE_READ(cred, suid.val);
	c->sgid = BPF_CORE_READ(cred, sgid.val);
	c->euid = BPF_CORE_READ(cred, euid.val);
	c->egid = BPF_CORE_READ(cred, egid.val);
	c->fsuid = BPF_CORE_READ(cred, fsuid.val);
	c->fsgid = BPF_CORE_READ(cred, fsgid.val);
	c->securebits = BPF_CORE_READ(cred, securebits);
	c->cap_permitted = read_cap(__builtin_preserve_access_index(&cred->cap_permitted));
	c->cap_effective = read_cap(__builtin_preserve_access_index(&cred->cap_effective));
	c->cap_inheritable = read_cap(__builtin_preserve_access_index(&cred->cap_inheritable));
	if (bpf_core_field_exists(task->loginuid))
		c->auid = BPF_CORE_READ(task, loginuid.val);
	else
		c->auid = (__u32)-1;
}

static __always_inline void fill_ns(struct proc_ns *ns, struct task_struct *task)
{
	struct nsproxy *nsp = BPF_CORE_READ(task, nsproxy);
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid upid = {};

	ns->uts = BPF_CORE_READ(nsp, uts_ns, ns.inum);
	ns->ipc = BPF_CORE_READ(nsp, ipc_ns, ns.inum);
	ns->mnt = BPF_CORE_READ(nsp, mnt_ns, ns.inum);
	ns->pid_for_children = BPF_CORE_READ(nsp, pid_ns_for_children, ns.inum);
	ns->net = BPF_CORE_READ(nsp, net_ns, ns.inum);
	if (bpf_core_field_exists(nsp->time_ns)) {
		ns->time = BPF_CORE_READ(nsp, time_ns, ns.inum);
		ns->time_for_children = BPF_CORE_READ(nsp, time_ns_for_children, ns.inum);
	}
	if (bpf_core_field_exists(nsp->cgroup_ns))
		ns->cgroup = BPF_CORE_READ(nsp, cgroup_ns, ns.inum);
	ns->user = BPF_CORE_READ(task, cred, user_ns, ns.inum);
	bpf_probe_read_kernel(&upid, sizeof(upid), &pid->numbers[level & 31]);
	ns->pid = BPF_CORE_READ(upid.ns, ns.inum);
}

static __always_inline __u32 task_nspid(struct task_struct *task)
{
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid upid = {};

	bpf_probe_read_kernel(&upid, sizeof(upid), &pid->numbers[level & 31]);
	return upid.nr;
}

static __always_inline void lookup_key(__u32 tgid, struct proc_key *out)
{
	struct execve_entry *e = bpf_map_lookup_elem(&execve_map, &tgid);

	if (e)
		*out = e->key;
}

/* append a resolved path to the record's data; returns the number of bytes appended */
static __always_inline __u32 append_path(struct exec_scratch *s, __u32 off, const struct path *p,
					 const struct path *root, __u32 *status)
{
	__u32 start = lanner_resolve_path(p, root, &s->path, status);
	__u32 len = LANNER_PATH_MAX - start;

	if (start >= LANNER_PATH_MAX || len > LANNER_PATH_MAX)
		return 0;
	if (off > EXEC_DATA_SIZE - LANNER_PATH_MAX)
		return 0;
	bpf_probe_read_kernel(&s->data[off], len, &s->path.buf[start]);
	return len;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(lanner_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0, off = 0, len, status;
	struct exec_scratch *s = bpf_map_lookup_elem(&exec_heap, &zero);
	__u64 id = bpf_get_current_pid_tgid();
	struct execve_entry *entry;
	struct exec_event *ev;
	const char *filename, *interp;
	struct path root, pwd, exe;
	unsigned long arg_start, arg_end;
	__u64 size;
	long n;

	if (!s)
		return 0;
	ev = &s->ev;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->hdr.op = LANNER_OP_EXEC;
	ev->hdr.cpu = bpf_get_smp_processor_id();
	ev->hdr.ktime = bpf_ktime_get_ns();
	ev->key.pid = id >> 32;
	ev->key.ktime = ev->hdr.ktime;
	ev->tid = (__u32)id;
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->nspid = task_nspid(task);
	ev->cgroup_id = bpf_get_current_cgroup_id();
	lookup_key(ev->ppid, &ev->parent);
	if (!ev->parent.ktime)
		ev->flags |= LANNER_EXEC_PARENT_MISS;
	fill_creds(&ev->creds, task);
	fill_ns(&ev->ns, task);

	/* filename as passed to execve; for a script, bprm->interp is the interpreter's name */
	filename = BPF_CORE_READ(bprm, filename);
	interp = BPF_CORE_READ(bprm, interp);
	if (interp != filename)
		ev->flags |= LANNER_EXEC_SCRIPT;
	n = bpf_probe_read_kernel_str(&s->data[0], LANNER_FILENAME_MAX, filename);
	if (n > 0) {
		len = n - 1;
		if (len == LANNER_FILENAME_MAX - 1)
			ev->flags |= LANNER_EXEC_TRUNC_FILENAME;
		ev->filename_len = len;
		off = len & (LANNER_FILENAME_MAX - 1);
	}

	/* the file actually executed (the interpreter for a script), relative to the task's root */
	root = BPF_CORE_READ(task, fs, root);
	exe = BPF_CORE_READ(bprm, file, f_path);
	ev->exe_ino = BPF_CORE_READ(bprm, file, f_inode, i_ino);
	len = append_path(s, off, &exe, &root, &status);
	if (status == LANNER_PATH_TRUNCATED)
		ev->flags |= LANNER_EXEC_TRUNC_PATH;
	ev->exe_len = len;
	off += len;

	/* cwd */
	pwd = BPF_CORE_READ(task, fs, pwd);
	len = append_path(s, off, &pwd, &root, &status);
	if (status == LANNER_PATH_TRUNCATED)
		ev->flags |= LANNER_EXEC_TRUNC_PATH;
	else if (status == LANNER_PATH_UNREACHABLE)
		ev->flags |= LANNER_EXEC_CWD_UNREACHABLE;
	if (!len)
		ev->flags |= LANNER_EXEC_ERROR_CWD;
	else if (len == 1)
		ev->flags |= LANNER_EXEC_ROOT_CWD;
	ev->cwd_len = len;
	off += len;

	/* argv, from the new image's stack */
	arg_start = BPF_CORE_READ(task, mm, arg_start);
	arg_end = BPF_CORE_READ(task, mm, arg_end);
	if (arg_end > arg_start) {
		__u64 total = arg_end - arg_start;
		__u32 max = cfg_args_max < LANNER_ARGS_MAX ? cfg_args_max : LANNER_ARGS_MAX;

		ev->args_size = total > 0xffffffff ? 0xffffffff : total;
		len = total > max ? max : total;
		if (total > max)
			ev->flags |= LANNER_EXEC_TRUNC_ARGS;
		if (off > EXEC_DATA_SIZE - LANNER_ARGS_MAX)
			len = 0;
		len &= (2 * LANNER_ARGS_MAX - 1);
		if (len > LANNER_ARGS_MAX)
			len = LANNER_ARGS_MAX;
		if (len && bpf_probe_read_user(&s->data[off], len, (void *)arg_start) < 0) {
			ev->flags |= LANNER_EXEC_ERROR_ARGS;
			len = 0;
		}
		ev->args_len = len;
		off += len;
	}

	size = sizeof(*ev) + off;
	if (size > sizeof(struct exec_event) + EXEC_DATA_SIZE)
		size = sizeof(struct exec_event) + EXEC_DATA_SIZE;
	lanner_output(LANNER_OP_EXEC, ev, size);

	/* the binary policies match on: the absolute filename, else the file the kernel ran */
	entry = &s->entry;
	__builtin_memset(entry, 0, sizeof(*entry));
	entry->key = ev->key;
	entry->parent = ev->parent;
	if (ev->filename_len && s->data[0] == '/' && !(ev->flags & (LANNER_EXEC_SCRIPT | LANNER_EXEC_TRUNC_FILENAME))) {
		len = ev->filename_len < LANNER_BINARY_MAX - 1 ? ev->filename_len : LANNER_BINARY_MAX - 1;
		bpf_probe_read_kernel(entry->binary, len & (LANNER_BINARY_MAX - 1), &s->data[0]);
	} else {
		__u32 at = ev->filename_len & (LANNER_FILENAME_MAX - 1);

		len = ev->exe_len < LANNER_BINARY_MAX - 1 ? ev->exe_len : LANNER_BINARY_MAX - 1;
		bpf_probe_read_kernel(entry->binary, len & (LANNER_BINARY_MAX - 1), &s->data[at]);
	}
	entry->binary_len = len;
	entry->exec_ns = ev->ns;
	entry->exec_caps[0] = ev->creds.cap_effective;
	entry->exec_caps[1] = ev->creds.cap_inheritable;
	entry->exec_caps[2] = ev->creds.cap_permitted;
	entry->flags |= LANNER_ENTRY_EXEC_STATE;
	bpf_map_update_elem(&execve_map, &ev->key.pid, entry, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(lanner_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 zero = 0;
	struct exec_scratch *s = bpf_map_lookup_elem(&exec_heap, &zero);
	struct execve_entry *entry, *pentry;
	struct clone_event *ev;
	__u32 tgid = BPF_CORE_READ(child, tgid);
	__u32 ptgid;

	if (!s)
		return 0;
	if (tgid != BPF_CORE_READ(child, pid))
		return 0; /* a new thread: same process */
	if (BPF_CORE_READ(child, flags) & PF_KTHREAD)
		return 0; /* kernel threads are not reported */
	ptgid = BPF_CORE_READ(parent, tgid);
	entry = &s->entry;
	pentry = bpf_map_lookup_elem(&execve_map, &ptgid);
	if (pentry) {
		__builtin_memcpy(entry, pentry, sizeof(*entry)); /* the child runs its parent's binary */
		entry->parent = pentry->key;
	} else {
		__builtin_memset(entry, 0, sizeof(*entry));
		entry->parent.pid = ptgid;
	}
	entry->key.pid = tgid;
	entry->key.pad = 0;
	entry->key.ktime = bpf_ktime_get_ns();
	bpf_map_update_elem(&execve_map, &tgid, entry, BPF_ANY);
	if (!cfg_emit_clone)
		return 0;

	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		lanner_count_lost(LANNER_OP_CLONE);
		return 0;
	}
	ev->hdr.op = LANNER_OP_CLONE;
	ev->hdr.pad0 = 0;
	ev->hdr.pad1 = 0;
	ev->hdr.cpu = bpf_get_smp_processor_id();
	ev->hdr.ktime = entry->key.ktime;
	ev->key = entry->key;
	ev->parent = entry->parent;
	ev->tid = tgid;
	ev->nspid = task_nspid(child);
	bpf_ringbuf_submit(ev, lanner_wakeup_flags(sizeof(*ev), true));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(lanner_exit, struct task_struct *task)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct exit_event *ev;
	struct execve_entry *e;

	/* only the last thread of the group ends the process */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (BPF_CORE_READ(task, flags) & PF_KTHREAD)
		return 0;

	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		lanner_count_lost(LANNER_OP_EXIT);
		bpf_map_delete_elem(&execve_map, &tgid);
		return 0;
	}
	ev->hdr.op = LANNER_OP_EXIT;
	ev->hdr.pad0 = 0;
	ev->hdr.pad1 = 0;
	ev->hdr.cpu = bpf_get_smp_processor_id();
	ev->hdr.ktime = bpf_ktime_get_ns();
	ev->key.pid = tgid;
	ev->key.pad = 0;
	ev->key.ktime = 0;
	e = bpf_map_lookup_elem(&execve_map, &tgid);
	if (e)
		ev->key = e->key;
	ev->tid = (__u32)id;
	ev->exit_code = BPF_CORE_READ(task, exit_code);
	bpf_ringbuf_submit(ev, lanner_wakeup_flags(sizeof(*ev), true));
	bpf_map_delete_elem(&execve_map, &tgid);
	return 0;
}
