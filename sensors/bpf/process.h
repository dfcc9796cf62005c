/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Process sensor records: the one definition of what the kernel sends to user space.
 * The Python decoder reads these layouts from the object's BTF (lanner.bpf.records).
 */
#pragma once

/* message ops (struct lanner_event_hdr.op); also the index into lanner_lost */
#define LANNER_OP_EXEC 1
#define LANNER_OP_CLONE 2
#define LANNER_OP_EXIT 5

/* limits, documented in docs/sensors.md */
#define LANNER_ARGS_MAX 8192        /* bytes of argv (NUL separated) carried per exec */
#define LANNER_PATH_MAX 4096        /* bytes of one resolved path */
#define LANNER_PATH_COMPONENTS 128  /* directory levels walked per path */
#define LANNER_FILENAME_MAX 4096    /* bytes of the filename passed to execve */

/* exec_event.flags */
#define LANNER_EXEC_TRUNC_ARGS (1 << 0)     /* argv longer than the limit */
#define LANNER_EXEC_TRUNC_FILENAME (1 << 1)
#define LANNER_EXEC_TRUNC_PATH (1 << 2)     /* a path hit LANNER_PATH_COMPONENTS or LANNER_PATH_MAX */
#define LANNER_EXEC_ERROR_CWD (1 << 3)      /* cwd could not be read */
#define LANNER_EXEC_ROOT_CWD (1 << 4)       /* cwd is the process root */
#define LANNER_EXEC_SCRIPT (1 << 5)         /* filename was a script; exe is its interpreter */
#define LANNER_EXEC_PARENT_MISS (1 << 6)    /* parent had no entry in execve_map */
#define LANNER_EXEC_ERROR_ARGS (1 << 7)     /* argv could not be read */
#define LANNER_EXEC_CWD_UNREACHABLE (1 << 8) /* cwd is outside the process root */

struct lanner_event_hdr {
	__u8 op;
	__u8 pad0;
	__u16 pad1;
	__u32 cpu;
	__u64 ktime; /* bpf_ktime_get_ns() when the event happened */
};

/* The identity of a process over time: its tgid and the ktime of its exec (or clone). */
struct proc_key {
	__u32 pid;
	__u32 pad;
	__u64 ktime;
};

struct proc_creds {
	__u32 uid;
	__u32 gid;
	__u32 suid;
	__u32 sgid;
	__u32 euid;
	__u32 egid;
	__u32 fsuid;
	__u32 fsgid;
	__u32 securebits;
	__u32 auid;
	__u64 cap_permitted;
	__u64 cap_effective;
	__u64 cap_inheritable;
};

struct proc_ns {
	__u32 uts;
	__u32 ipc;
	__u32 mnt;
	__u32 pid;
	__u32 pid_for_children;
	__u32 net;
	__u32 time;
	__u32 time_for_children;
	__u32 cgroup;
	__u32 user;
};

/*
 * exec: followed by data[] = filename, exe path, cwd, argv, each of the *_len bytes below
 * (no terminating NULs; argv entries are NUL separated).
 */
struct exec_event {
	struct lanner_event_hdr hdr;
	struct proc_key key;
	struct proc_key parent;
	__u32 tid;
	__u32 ppid;
	__u32 flags;
	__u32 nspid; /* pid in the process's own pid namespace */
	__u64 cgroup_id;
	__u64 exe_ino;
	struct proc_creds creds;
	struct proc_ns ns;
	__u32 args_size; /* full argv size in the process, before truncation */
	__u16 filename_len;
	__u16 exe_len;
	__u16 cwd_len;
	__u16 args_len;
	__u32 pad2;
	char data[];
};

/* clone/fork of a new process (threads are not reported) */
struct clone_event {
	struct lanner_event_hdr hdr;
	struct proc_key key;    /* the child */
	struct proc_key parent; /* the parent's exec identity */
	__u32 tid;
	__u32 nspid;
};

struct exit_event {
	struct lanner_event_hdr hdr;
	struct proc_key key;
	__u32 tid;
	__u32 exit_code; /* wait status: (code << 8) | signal */
};

#define LANNER_BINARY_MAX 256 /* bytes of the binary path kept per live process (for policies) */

/*
 * execve_map value: the current identity of a live process, and the binary it runs (absolute path,
 * zero padded, so policy programs can use it directly as a hash or LPM key for matchBinaries).
 * Shared with the policy programs, which read it by reusing this map.
 */
struct execve_entry {
	struct proc_key key;
	struct proc_key parent;
	__u32 binary_len;
	__u32 flags; /* LANNER_ENTRY_* */
	char binary[LANNER_BINARY_MAX];
	/* The namespaces and capabilities the process had at its exec (a forked child inherits its
	 * parent's), for the policies' matchNamespaceChanges / matchCapabilityChanges. Valid when flags
	 * has LANNER_ENTRY_EXEC_STATE; a process seeded from /proc gets them from the first policy
	 * program that needs them. The policy programs update them after they report a change. */
	struct proc_ns exec_ns;
	__u64 exec_caps[3]; /* effective, inheritable, permitted */
};

/* execve_entry.flags */
#define LANNER_ENTRY_EXEC_STATE (1 << 0) /* exec_ns and exec_caps are set */
