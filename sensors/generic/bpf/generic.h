/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * TracingPolicy engine records: the one definition of the per-hook configuration the Python
 * compiler (lanner.sensors.generic.compiler) writes into maps, and of the event record the generic programs
 * send. Python reads these layouts from the object's BTF (lanner.bpf.records / btf sizes), and the constants
 * below too: every enum named in struct gen_abi (gen_maps.bpf.h) is read by name from the object's BTF
 * (lanner.sensors.generic.abi), so a value is written here only.
 */
#pragma once

enum gen_op {
	GEN_OP = 9, /* lanner_event_hdr.op of policy events; also its lanner_lost slot */
};

/* limits (docs/policy-engine.md) */
enum gen_limits {
	GEN_MAX_ARGS = 5,
	GEN_MAX_SELECTORS = 5,
	GEN_MAX_FILTERS = 8, /* matchArgs + matchReturnArgs entries per selector */
	GEN_MAX_RANGES = 4, /* inline ranges/masks per filter (sets of values live in maps) */
	GEN_MAX_PIDS = 4,
	GEN_MAX_PID_ENTRIES = 2, /* matchPIDs entries per selector (ANDed) */
	GEN_MAX_NS = 4, /* matchNamespaces entries per selector */
	GEN_MAX_NS_VALUES = 4,
	GEN_STR_MAX = 254, /* bytes of a string kept for matching and reporting (253 chars + NUL) */
	GEN_PARENT_LEVELS = 8, /* matchPIDs followForks / matchBinaries followChildren ancestor walk */
	GEN_RET_ARG = 7, /* gen_filter.arg for the return value */
};

/* gen_arg.type: how an argument is read */
enum gen_arg_type {
	GA_NONE = 0,
	GA_INT = 1, /* integer of gen_arg.size bytes, sign-extended when is_signed */
	GA_USTR = 2, /* user pointer to a NUL-terminated string */
	GA_KSTR = 3, /* kernel pointer to a NUL-terminated string */
	GA_DATALOC = 4, /* tracepoint __data_loc string (u32: len << 16 | offset in the record) */
	GA_INLINE_STR = 5, /* char array inside the tracepoint record */
	GA_UBUF = 6, /* user buffer, size from the arg at size_arg (1-based) */
	GA_FD = 7, /* file descriptor -> absolute path of the file */
	GA_USOCKADDR = 8, /* user struct sockaddr: val = family, aux = port, str = address bytes */
	GA_IOVEC = 9, /* user struct iovec array, count from size_arg: first buffer */
	/* BTF-typed kernel pointers (kprobe / LSM arguments), read with CO-RE */
	GA_FILE = 10, /* struct file * -> absolute path (str), f_flags (aux), i_mode (vals) */
	GA_PATH = 11, /* struct path * -> absolute path, i_mode (vals) */
	GA_DENTRY = 12, /* struct dentry * -> path inside its filesystem */
	GA_BINPRM = 13, /* struct linux_binprm * -> its file's absolute path */
	GA_CRED = 14, /* struct cred * -> struct gen_cred_info in str */
	GA_SOCK = 15, /* struct sock * -> struct gen_sock_info in str, family in vals */
	GA_SOCKET = 16, /* struct socket * -> its sk, as GA_SOCK */
	GA_SKB = 17, /* struct sk_buff * -> struct gen_sock_info from the IP/TCP/UDP headers */
	GA_KSOCKADDR = 18, /* kernel struct sockaddr *: as GA_USOCKADDR */
	GA_USERNS = 19, /* struct user_namespace * -> struct gen_userns_info in str */
	GA_NETDEV = 20, /* struct net_device * -> name */
	GA_MODULE = 21, /* struct module * -> name (str), taints (vals) */
	GA_LOAD_INFO = 22, /* struct load_info * -> name (str), sig_ok (aux: 0/1, 2 unknown) */
	GA_BPF_ATTR = 23, /* union bpf_attr * (BPF_PROG_LOAD) -> struct gen_bpf_attr_info in str */
	GA_BPF_MAP = 24, /* struct bpf_map * -> struct gen_bpf_map_info in str */
	GA_PERF_EVENT = 25, /* struct perf_event * -> struct gen_perf_event_info in str */
	GA_KIOCB = 26, /* struct kiocb * -> its ki_filp, as GA_FILE */
	GA_IOV_ITER = 27, /* struct iov_iter * -> the user bytes of its first segment (ITER_UBUF / ITER_IOVEC) in str,
			   * the segment's size in aux */
};

/* gen_arg.flags */
enum gen_arg_flags {
	GAF_ZERO = 1, /* zero the whole string slot before reading (a string compared as a hash key: Equal) */
};

/* gen_filter.kind */
enum gen_filter_kind {
	GF_INT = 1, /* value in set (set_id) or in one of the ranges */
	GF_MASK = 2, /* value & lo[i] != 0 for some i */
	GF_STR_EQ = 3, /* string in the hash set set_id */
	GF_STR_PREFIX = 4, /* a prefix of the string is in LPM set set_id */
	GF_STR_POSTFIX = 5, /* a prefix of the reversed string is in LPM set set_id */
	GF_ADDR = 6, /* address (str at soff, family in vals) in CIDR LPM set set_id (v4) / set_id2 (v6) */
};

/* gen_filter.flags */
enum gen_filter_flags {
	GFF_NEGATE = 1 << 0,
	GFF_SIGNED = 1 << 1,
	GFF_AUX = 1 << 2, /* compare the arg's aux value (sockaddr port, buffer size) */
	GFF_RET = 1 << 3, /* matchReturnArgs: evaluated at return */
	GFF_SUB = 1 << 4, /* compare the ssize-byte integer at str offset soff (gen_sock_info fields) */
};

/* gen_selector operators */
enum gen_operator {
	GOP_NONE = 0,
	GOP_IN = 1,
	GOP_NOTIN = 2,
	GOP_PREFIX = 3,
	GOP_NOTPREFIX = 4,
	GOP_POSTFIX = 5,
	GOP_NOTPOSTFIX = 6,
};

/* gen_selector.cap_type / capch_type: which of the task's capability sets */
enum gen_cap_type {
	GCT_EFFECTIVE = 0,
	GCT_INHERITABLE = 1,
	GCT_PERMITTED = 2,
};

/* gen_pids.flags */
enum gen_pid_flags {
	GPF_FOLLOW = 1,
	GPF_NSPID = 2,
};

/* gen_selector.flags */
enum gen_selector_flags {
	GSF_POST = 1 << 0,
	GSF_SIGNAL = 1 << 1,
	GSF_HAS_RET = 1 << 2,
	GSF_OVERRIDE = 1 << 3, /* Override: return override_ret (LSM) / fmod_ret returns it (kprobe) */
	GSF_TRACKSOCK = 1 << 4, /* TrackSock: the sock of arg sock_arg -> this process (gen_socktrack) */
	GSF_UNTRACKSOCK = 1 << 5, /* UntrackSock: forget the sock of arg sock_arg */
	GSF_KSTACK = 1 << 6, /* Post kernelStackTrace: the event carries a gen_stacks id of the kernel stack */
	GSF_USTACK = 1 << 7, /* Post userStackTrace: ... of the user stack (BPF_F_USER_STACK) */
};

/* gen_stats slots: per entry hook id, per-CPU counters of what the generic programs did; summed
 * over CPUs and the policy's hooks into TracingPolicyStatus.stats.action_counters at list time */
enum gen_stat {
	GST_MATCHED = 0, /* a selector matched (or the hook has none) */
	GST_POST = 1, /* event written to the ring buffer */
	GST_SIGNAL = 2, /* Sigkill/Signal sent (mode enforce) */
	GST_MONITOR_SIGNAL = 3, /* Sigkill/Signal matched but not sent (mode monitor) */
	GST_NOPOST = 4, /* matched, NoPost: no event */
	GST_RATE_LIMITED = 5, /* Post suppressed by rateLimit */
	GST_POST_LOST = 6, /* Post failed: the ring buffer was full */
	GST_OVERRIDE = 7, /* Override applied (mode enforce) */
	GST_MONITOR_OVERRIDE = 8, /* Override matched but not applied (mode monitor) */
	GST_SLOTS = 9,
};

/* gen_hook.flags */
enum gen_hook_flags {
	GHF_ENFORCE = 1 << 0, /* policy mode enforce: signals are sent */
	GHF_EXIT = 1 << 1, /* the return half of a hook: pair = the entry hook's id */
	GHF_HAS_RET = 1 << 2, /* entry half of a return hook: store, the exit half emits */
	GHF_UPROBE = 1 << 3, /* args come from pt_regs (off = argument number): uprobes and kprobes */
	GHF_BTF = 1 << 4, /* args come from the BTF context array (LSM, fentry: off = argument number) */
	GHF_LSM = 1 << 5, /* BPF LSM hook: Override is the program's return value */
	GHF_USDT = 1 << 6, /* USDT probe (a uprobe): args at gen_arg.loc/reg/disp */
	GHF_SYSCALL = 1 << 7, /* served by the sys_enter/sys_exit dispatcher (generic_sys.bpf.c): args are the
			      * syscall's arguments from pt_regs (off = argument number), sysnr = nr + 1 */
	GHF_SYSWRAP = 1 << 8, /* a syscall: true hook on the syscall's wrapper __x64_sys_X(struct pt_regs *regs)
			      * (fentry or kprobe): args are the user's registers in *regs (x86-64 syscall ABI:
			      * di, si, dx, r10, r8, r9; off = argument number), read with CO-RE */
	GHF_RET_SOCK = 1 << 10, /* returnArg type sock: the returned struct sock * is read into str[ret_slot] */
	GHF_RET_TRACKSOCK = 1 << 11, /* returnArgAction TrackSock: the returned sock -> this process (gen_socktrack) */
	GHF_RET_UNTRACKSOCK = 1 << 12, /* returnArgAction UntrackSock: forget the returned sock */
	GHF_SCOPED_CG = 1 << 13, /* a container-scoped policy (containerSelector): the hook also runs for tasks whose
				* cgroup (v2 id) is in gen_scope_cg under gen_hook.policy */
	GHF_SCOPED = 1 << 9, /* a workload-scoped policy (TracingPolicyNamespaced, podSelector): the hook runs only
			      * for tasks whose network namespace is in gen_scope under gen_hook.policy */
};

/* the syscall dispatcher (generic_sys.bpf.c): gen_sys_on[nr] says whether hooks watch syscall nr and which
 * of the two gen_sys_list buffers of each direction is current; gen_sys_list[nr * 4 + dir * 2 + buf] lists
 * the hook ids (0 = free slot) */
enum gen_sys {
	GEN_SYS_NR = 512, /* x86-64 syscall numbers served (x32 numbers, bit 30, are not) */
	GEN_SYS_HOOKS = 64, /* hooks per syscall and direction */
	GSO_ENTER = 1, /* gen_sys_on bits */
	GSO_EXIT = 2,
	GSO_ENTER_BUF = 4,
	GSO_EXIT_BUF = 8,
	GEN_SYS_PF_ENTRIES = 8192, /* gen_sys_pf: the prefilter's prefixes, all syscalls together */
	GEN_SYS_PF_ARG_BITS = 4, /* gen_sys_pf set = nr << GEN_SYS_PF_ARG_BITS | GSP_REVERSED? | argument number */
	GSP_REVERSED = 8, /* gen_sys_pf set bit: the postfixes' entries, reversed */
	GSP_PREFIX = 1, /* gen_sys_hooks.pf_kinds: look the string up */
	GSP_POSTFIX = 2, /* and / or the reversed string */
};

/* namespace types (gen_ns.type), in struct proc_ns order */
enum gen_ns_type {
	GNS_UTS = 0,
	GNS_IPC = 1,
	GNS_MNT = 2,
	GNS_PID = 3,
	GNS_PID_FOR_CHILDREN = 4,
	GNS_NET = 5,
	GNS_TIME = 6,
	GNS_TIME_FOR_CHILDREN = 7,
	GNS_CGROUP = 8,
	GNS_USER = 9,
};

/* gen_arg.loc: where a USDT argument is (GHF_USDT), from the probe's note */
enum gen_arg_loc {
	GL_REG = 1, /* register reg */
	GL_MEM = 2, /* user memory at register reg + disp */
	GL_CONST = 3, /* the constant disp */
};

struct gen_arg {
	__u16 off;     /* offset in the tracepoint record, or argument number (uprobe) */
	__u8 size;     /* bytes of the raw field */
	__u8 type;     /* GA_* */
	__u8 is_signed;
	__u8 size_arg; /* 1-based index of the args entry that holds the size (GA_UBUF/GA_IOVEC) */
	__u8 loc;      /* GHF_USDT: GL_* */
	__u8 reg;      /* GHF_USDT: pt_regs slot (ax bx cx dx si di bp sp r8..r15 ip) */
	__u8 usize;    /* GHF_USDT: bytes of the value (1, 2, 4, 8) */
	__u8 usigned;  /* GHF_USDT: the value is signed */
	__u16 flags;   /* GAF_* */
	__u32 pad2;
	__s64 disp;    /* GHF_USDT: GL_MEM displacement or GL_CONST value */
};

struct gen_filter {
	__u8 arg;     /* index in the hook's args, or GEN_RET_ARG */
	__u8 kind;    /* GF_* */
	__u8 flags;   /* GFF_* */
	__u8 nranges;
	__u16 set_id;
	__u16 set_id2;
	__u16 soff;   /* GFF_SUB / GF_ADDR: offset in the arg's str */
	__u8 ssize;   /* GFF_SUB: 1, 2 or 4 bytes */
	__u8 pad[5];
	__u64 lo[GEN_MAX_RANGES];
	__u64 hi[GEN_MAX_RANGES];
};

struct gen_ns {
	__u8 type;
	__u8 op;
	__u8 nvals;
	__u8 pad;
	__u32 vals[GEN_MAX_NS_VALUES];
};

/* one matchPIDs entry */
struct gen_pids {
	__u8 op;    /* GOP_IN / GOP_NOTIN; 0: unused */
	__u8 flags; /* GPF_* */
	__u8 n;
	__u8 pad;
	__u32 vals[GEN_MAX_PIDS];
};

struct gen_selector {
	__u8 nfilters;
	__u8 pad0[3];
	__u8 bin_op;
	__u8 bin_follow;
	__u8 nns;
	__u8 cap_op;
	__u16 bin_set;
	__u8 cap_type; /* GCT_* */
	__u8 sock_arg; /* TrackSock/UntrackSock: the position of the sock/socket arg */
	struct gen_pids pids[GEN_MAX_PID_ENTRIES];
	__u64 cap_mask;
	struct gen_ns ns[GEN_MAX_NS];
	__u32 action; /* KPROBE_ACTION_* number reported in the event */
	__u32 flags;  /* GSF_* */
	__u32 signal;
	__s32 override_ret; /* Override argError */
	__u64 rate_limit_ns;
	__u64 capch_mask;   /* matchCapabilityChanges: the listed capabilities */
	__u32 cap_userns;   /* matchCapabilities isNamespaceCapability: the host user ns inode (0: off) */
	__u32 capch_userns; /* the same for matchCapabilityChanges */
	__u16 nsch_mask;    /* matchNamespaceChanges: bit (1 << GNS_*) per namespace compared with exec time */
	__u8 nsch_op;       /* matchNamespaceChanges present (GOP_IN; NotIn is compiled into the mask) */
	__u8 capch_op;      /* matchCapabilityChanges: GOP_IN / GOP_NOTIN, 0 = none */
	__u8 capch_type;    /* GCT_* */
	__u8 pad2[3];
	struct gen_filter filters[GEN_MAX_FILTERS];
};

struct gen_hook {
	__u32 flags;
	__u32 nargs;
	__u32 nselectors;
	__u32 pair;
	__u16 ret_off; /* tracepoint exit half: the ret field */
	__u8 ret_size;
	__u8 ret_signed;
	__u32 sysnr;   /* GHF_SYSCALL: the syscall number + 1 (the dispatcher runs the hook for that syscall only) */
	__u32 policy;  /* the policy's id: its gen_scope key (GHF_SCOPED) and the owner of its gen_socktrack entries */
	__u8 ret_slot; /* GHF_RET_SOCK: the str slot of the returned sock (the hook's nargs) */
	__u8 pad[3];
	struct gen_arg args[GEN_MAX_ARGS];
	struct gen_selector sel[GEN_MAX_SELECTORS];
};

/* a string as a map key: hash sets use prefixlen as a "truncated" marker (0 = complete), LPM sets
 * use it as the prefix length in bits over {set_id (big endian), s} */
struct gen_str {
	__u32 prefixlen;
	__u8 set_hi;
	__u8 set_lo;
	char s[GEN_STR_MAX];
};

struct gen_sys_hooks {
	__u32 n;                   /* slots in use (the highest used slot + 1) */
	__u32 pf_hook;             /* the prefilter (entry only, 0 = none): this hook's args[pf_slot] is read once, */
	__u32 pf_slot;             /* its string looked up in gen_sys_pf under pf_set; only the slots in the value */
	__u16 pf_set;              /* found, or in pf_always, run (generic_sys.bpf.c) */
	__u16 pf_kinds;            /* GSP_PREFIX, GSP_POSTFIX: the look-ups to make */
	__u64 pf_always;           /* slots run whatever the string */
	__u32 ids[GEN_SYS_HOOKS];  /* hook ids, 0 = free */
};

/* gen_socktrack value: the process a tracked sock belongs to, and the policy that tracked it (its entries
 * are removed with it: a freed sock's address is reused, and a stale entry would misname the next owner) */
struct gen_socktrack_val {
	struct proc_key key;
	__u32 policy;
	__u32 pad;
};

/* gen_scope: the pods a workload-scoped policy runs for, by network namespace inode (every process of a pod
 * shares its netns); written by lanner.sensors.generic.scopes as pods come and go */
struct gen_scope_key {
	__u32 scope;
	__u32 netns;
};

/* gen_scope_cg: the containers a containerSelector policy runs for, by cgroup v2 id */
struct gen_scope_cg_key {
	__u32 scope;
	__u32 pad;
	__u64 cgroup;
};

struct gen_int_key {
	__u32 set_id;
	__u32 pad;
	__u64 val;
};

/* what GA_SOCK/GA_SOCKET/GA_SKB put in gen_event.str[i] (ports in host order) */
struct gen_sock_info {
	__u16 family;
	__u16 type;
	__u16 protocol;
	__u16 state;
	__u16 sport;
	__u16 dport;
	__u32 mark;
	__u32 priority;
	__u32 len;
	__u64 cookie;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* GA_CRED */
struct gen_cred_info {
	__u32 uid, gid, euid, egid, suid, sgid, fsuid, fsgid;
	__u32 securebits;
	__u32 userns_inum;
	__u64 cap_permitted;
	__u64 cap_effective;
	__u64 cap_inheritable;
};

/* GA_USERNS */
struct gen_userns_info {
	__s32 level;
	__u32 owner;
	__u32 group;
	__u32 inum;
};

/* GA_BPF_ATTR: the program being loaded */
enum gen_bpf_name {
	GEN_BPF_NAME = 16, /* BPF_OBJ_NAME_LEN */
};
struct gen_bpf_attr_info {
	__u32 prog_type;
	__u32 insn_cnt;
	char prog_name[GEN_BPF_NAME];
};

/* GA_BPF_MAP */
struct gen_bpf_map_info {
	__u32 map_type;
	__u32 key_size;
	__u32 value_size;
	__u32 max_entries;
	char name[GEN_BPF_NAME];
};

/* GA_PERF_EVENT: its attr; kprobe_func (attr.config1: a user pointer to the probed function's name) is read
 * for dynamic PMUs only (type >= PERF_TYPE_MAX: kprobe, uprobe), where config1 can be a name */
enum gen_ksym_name {
	GEN_KSYM_NAME = 128, /* as Tetragon (the kernel allows 512 since 6.1): a longer name is cut */
};
struct gen_perf_event_info {
	__u64 config;
	__u64 probe_offset;
	__u32 type;
	__u32 pad;
	char kprobe_func[GEN_KSYM_NAME];
};

/* gen_event.flags */
enum gen_event_flags {
	GEF_RETURN = 1 << 0, /* ret is set */
	GEF_NOPROC = 1 << 1, /* the process had no execve_map entry */
	GEF_SIGNALED = 1 << 2,
	GEF_OVERRIDDEN = 1 << 3,
	GEF_ENFORCED = 1 << 4, /* return: true hooks: the selector's Signal/Override ran at the entry */
	GEF_KSTACK = 1 << 5, /* kstack is set: a gen_stacks id, or -errno of bpf_get_stackid */
	GEF_USTACK = 1 << 6, /* ustack is set: the same for the user stack */
};

/* gen_stacks: bpf_get_stackid's map (Post kernelStackTrace / userStackTrace), shared by every generic program;
 * user space reads an event's stacks and deletes them (lanner.sensors.generic.stacks) */
enum gen_stacks {
	GEN_STACK_DEPTH = 127, /* frames per stack: PERF_MAX_STACK_DEPTH (the kernel.perf_event_max_stack default) */
	GEN_STACK_ENTRIES = 4096, /* stacks (hash buckets; a different stack in a taken bucket: -EEXIST) */
};

struct gen_event {
	struct lanner_event_hdr hdr;
	struct proc_key key;
	__u32 hook_id;
	__u32 tid;
	__u32 selector;
	__u32 action;
	__u32 flags;
	__u32 nargs;
	__s64 ret;
	__u64 vals[GEN_MAX_ARGS];
	__u64 aux[GEN_MAX_ARGS];
	__u32 lens[GEN_MAX_ARGS]; /* bytes in str[i].s */
	__u32 trunc;              /* bit i: arg i's string was truncated */
	__s32 kstack;             /* GEF_KSTACK: the kernel stack's id in gen_stacks (< 0: -errno, none) */
	__s32 ustack;             /* GEF_USTACK: the user stack's */
	struct gen_str str[GEN_MAX_ARGS];
};

struct gen_ratelimit_key {
	__u32 hook_id;
	__u32 selector;
	__u64 vals[GEN_MAX_ARGS];
	__u64 head[GEN_MAX_ARGS][2]; /* first 16 bytes of each string */
};
