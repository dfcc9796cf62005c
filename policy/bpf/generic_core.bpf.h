/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The generic policy datapath shared by generic_tp.bpf.c and generic_uprobe.bpf.c: maps, argument
 * readers, selector evaluation and actions. A program finds its hook's configuration with its
 * bpf_cookie (the hook id); nothing here depends on a particular policy.
 */
#pragma once

#include <lanner/common.bpf.h>
#include <bpf/bpf_endian.h>
#include "../../sensors/bpf/process.h"
#include <lanner/path.bpf.h>
#include "generic.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* v clamped to [0, n) in the register the verifier sees (clang may otherwise check a copy) */
#define GEN_BOUND(v, n) ({ __u64 __v = (v); asm volatile("if %0 < %1 goto +1; %0 = 0;" : "+r"(__v) : "i"(n)); __v; })

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct execve_entry);
} execve_map SEC(".maps"); /* the process sensor's map, reused by fd */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct gen_hook);
} gen_hooks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct gen_scope_key);
	__type(value, __u8);
} gen_scope SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct gen_scope_cg_key);
	__type(value, __u8);
} gen_scope_cg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct gen_int_key);
	__type(value, __u8);
} gen_int_set SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, struct gen_str);
	__type(value, __u8);
} gen_str_set SEC(".maps");

/* the same sets for short strings, keyed by the first GEN_STR_KEY32/64/128 bytes of struct gen_str: a string
 * of len bytes lives in the smallest map whose key holds it zero padded (gen_str_bucket), so a lookup
 * hashes 32, 64 or 128 bytes instead of the whole 260-byte key (jhash over the key is most of its cost) */
#define GEN_STR_KEY32 32
#define GEN_STR_KEY64 64
#define GEN_STR_KEY128 128
#define GEN_STR_HDR 6 /* prefixlen, set_hi, set_lo */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, GEN_STR_KEY32);
	__uint(value_size, 1);
} gen_str_set32 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, GEN_STR_KEY64);
	__uint(value_size, 1);
} gen_str_set64 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, GEN_STR_KEY128);
	__uint(value_size, 1);
} gen_str_set128 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 32768);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct gen_str);
	__type(value, __u8);
} gen_str_lpm SEC(".maps");

struct gen_scratch {
	struct gen_event ev;
	struct gen_str rev[GEN_MAX_ARGS]; /* reversed strings, for Postfix */
	struct gen_str bin;               /* the current binary */
	struct gen_str binrev;
	struct gen_str key;               /* lookup key under construction */
	struct gen_ratelimit_key rl;
	__u32 rev_done;                   /* bit i: rev[i] is ready; GEN_BIN_DONE: bin; GEN_BINREV_DONE: binrev */
	__u32 key_done;                   /* ev.key is set (the process's, or a tracked sock's owner) */
	__u32 bin_len;                    /* bytes of the binary in bin */
	__u32 override_set;               /* LSM: the matched selector asks to return override_ret */
	__s64 override_ret;
	struct gen_sock_info sock;        /* typed kernel arguments under construction */
	struct gen_cred_info cred;
	struct gen_userns_info userns;
	union {                           /* GA_BPF_ATTR, GA_BPF_MAP, GA_PERF_EVENT */
		struct gen_bpf_attr_info bpf_attr;
		struct gen_bpf_map_info bpf_map;
		struct gen_perf_event_info perf;
	};
	__u64 sysargs[6];                 /* GHF_SYSCALL: the syscall's arguments (generic_sys.bpf.c) */
	struct lanner_path_buf pb;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_scratch);
} gen_heap SEC(".maps");

/* entry half of a return hook -> its event, until the exit half runs */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct gen_event);
} gen_inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct gen_ratelimit_key);
	__type(value, __u64);
} gen_ratelimit SEC(".maps");

/* Override on a kprobe: pid_tgid -> the value the fmod_ret program on the same function returns */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __s64);
} gen_override SEC(".maps");

/* TrackSock: struct sock * -> the process that owns it; events on a tracked sock report that process */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct gen_socktrack_val);
} gen_socktrack SEC(".maps");

/* per entry hook id: GST_* counters (generic.h), one row per CPU */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64[GST_SLOTS]);
} gen_stats SEC(".maps");

/* Post kernelStackTrace / userStackTrace: stack id -> the return addresses (generic.h GEN_STACK_*) */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, GEN_STACK_ENTRIES);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, GEN_STACK_DEPTH * sizeof(__u64));
} gen_stacks SEC(".maps");

static __always_inline void gen_stat(__u32 hook_id, __u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&gen_stats, &hook_id);

	if (v && slot < GST_SLOTS)
		v[slot] += 1; /* per-CPU value: no other writer on this CPU while the program runs */
}

/* ------------------------------------------------------------------------------ argument reading */
struct gen_read_ctx {
	__u64 ctx;  /* tracepoint record or pt_regs address */
	struct gen_hook *hook;
	struct gen_scratch *s;
	__u64 raw[GEN_MAX_ARGS];
};

/* a USDT argument: a register, user memory at register + displacement, or a constant, of usize bytes */
static __always_inline __u64 gen_usdt_raw(struct pt_regs *regs, struct gen_arg *a)
{
	__u64 v = 0, r = 0;

	if (a->loc == GL_CONST)
		return (__u64)a->disp;
	switch (a->reg) {
	case 0: r = BPF_CORE_READ(regs, ax); break;
	case 1: r = BPF_CORE_READ(regs, bx); break;
	case 2: r = BPF_CORE_READ(regs, cx); break;
	case 3: r = BPF_CORE_READ(regs, dx); break;
	case 4: r = BPF_CORE_READ(regs, si); break;
	case 5: r = BPF_CORE_READ(regs, di); break;
	case 6: r = BPF_CORE_READ(regs, bp); break;
	case 7: r = BPF_CORE_READ(regs, sp); break;
	case 8: r = BPF_CORE_READ(regs, r8); break;
	case 9: r = BPF_CORE_READ(regs, r9); break;
	case 10: r = BPF_CORE_READ(regs, r10); break;
	case 11: r = BPF_CORE_READ(regs, r11); break;
	case 12: r = BPF_CORE_READ(regs, r12); break;
	case 13: r = BPF_CORE_READ(regs, r13); break;
	case 14: r = BPF_CORE_READ(regs, r14); break;
	case 15: r = BPF_CORE_READ(regs, r15); break;
	case 16: r = BPF_CORE_READ(regs, ip); break;
	}
	if (a->loc == GL_MEM) {
		if (bpf_probe_read_user(&v, a->usize <= 8 ? a->usize & 15 : 8, (void *)(r + a->disp)) < 0)
			v = 0;
	} else {
		v = r;
	}
	switch (a->usize) {
	case 1: return a->usigned ? (__u64)(__s64)(__s8)v : (__u8)v;
	case 2: return a->usigned ? (__u64)(__s64)(__s16)v : (__u16)v;
	case 4: return a->usigned ? (__u64)(__s64)(__s32)v : (__u32)v;
	}
	return v;
}

static __always_inline __u64 gen_raw(__u64 ctx, struct gen_scratch *s, struct gen_hook *hook, struct gen_arg *a)
{
	__u64 v = 0;

	if (hook->flags & GHF_SYSCALL) /* read from pt_regs once by the dispatcher */
		return a->off < 6 ? s->sysargs[a->off % 6] : 0;
	if (hook->flags & GHF_USDT)
		return gen_usdt_raw((struct pt_regs *)ctx, a);
	if (hook->flags & GHF_SYSWRAP) { /* __x64_sys_X(const struct pt_regs *regs): the user's registers */
		struct pt_regs *regs;

		if (hook->flags & GHF_BTF) /* fentry: regs is the first slot of the BTF context array */
			bpf_probe_read_kernel(&regs, sizeof(regs), (void *)ctx);
		else /* kprobe: regs is the wrapper's first argument, in the kprobe's own pt_regs */
			regs = (struct pt_regs *)BPF_CORE_READ((struct pt_regs *)ctx, di);
		switch (a->off) {
		case 0: v = BPF_CORE_READ(regs, di); break;
		case 1: v = BPF_CORE_READ(regs, si); break;
		case 2: v = BPF_CORE_READ(regs, dx); break;
		case 3: v = BPF_CORE_READ(regs, r10); break;
		case 4: v = BPF_CORE_READ(regs, r8); break;
		case 5: v = BPF_CORE_READ(regs, r9); break;
		}
		return v;
	}

	if (hook->flags & GHF_UPROBE) {
		struct pt_regs *regs = (struct pt_regs *)ctx;

		switch (a->off) {
		case 0: v = BPF_CORE_READ(regs, di); break;
		case 1: v = BPF_CORE_READ(regs, si); break;
		case 2: v = BPF_CORE_READ(regs, dx); break;
		case 3: v = BPF_CORE_READ(regs, cx); break;
		case 4: v = BPF_CORE_READ(regs, r8); break;
		case 5: v = BPF_CORE_READ(regs, r9); break;
		}
		return v;
	}
	if (hook->flags & GHF_BTF) { /* LSM / fentry: an array of u64 arguments */
		bpf_probe_read_kernel(&v, 8, (void *)(ctx + 8 * (a->off & 15)));
		return v;
	}
	bpf_probe_read_kernel(&v, a->size <= 8 ? a->size & 15 : 8, (void *)(ctx + a->off));
	return v;
}

static __always_inline __u64 gen_extend(__u64 v, __u32 size, __u32 is_signed)
{
	switch (size) {
	case 1: return is_signed ? (__u64)(__s64)(__s8)v : (v & 0xff);
	case 2: return is_signed ? (__u64)(__s64)(__s16)v : (v & 0xffff);
	case 4: return is_signed ? (__u64)(__s64)(__s32)v : (v & 0xffffffff);
	}
	return v;
}

static __always_inline struct file *gen_fd_file(__u64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	struct file *f = NULL;

	if (fd >= max)
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/* the absolute path of a kernel struct path * (or of a dentry alone when path is NULL) into str[i] */
static __always_inline void gen_read_path(struct gen_scratch *s, __u32 i, const struct path *path,
					  struct dentry *dentry)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct path root, p = {};
	__u32 status = 0, pos, len;

	if (i >= GEN_MAX_ARGS)
		return;
	root = BPF_CORE_READ(task, fs, root);
	if (path) {
		bpf_probe_read_kernel(&p, sizeof(p), path);
	} else {
		p.dentry = dentry; /* no mount: the walk stops at its filesystem's root */
		p.mnt = NULL;
	}
	if (!p.dentry)
		return;
	pos = lanner_resolve_path(&p, &root, &s->pb, &status);
	if (pos >= LANNER_PATH_MAX)
		return;
	len = LANNER_PATH_MAX - pos;
	if (len > GEN_STR_MAX - 1) {
		len = GEN_STR_MAX - 1;
		s->ev.trunc |= 1 << i;
	}
	bpf_probe_read_kernel(s->ev.str[i].s, len & 255, &s->pb.buf[pos & (LANNER_PATH_MAX - 1)]);
	s->ev.lens[i] = len;
}

static __always_inline void gen_read_fd(struct gen_scratch *s, __u32 i, __u64 fd)
{
	struct file *f = gen_fd_file(fd);

	if (f)
		gen_read_path(s, i, &f->f_path, NULL);
}

static __always_inline void gen_put_info(struct gen_scratch *s, __u32 i, void *info, __u32 size)
{
	if (i >= GEN_MAX_ARGS || size > GEN_STR_MAX)
		return;
	bpf_probe_read_kernel(s->ev.str[i].s, size & 255, info);
	s->ev.lens[i] = size;
}

static __always_inline void gen_read_sock(struct gen_scratch *s, __u32 i, struct sock *sk)
{
	struct gen_sock_info *si = &s->sock;

	__builtin_memset(si, 0, sizeof(*si));
	if (!sk)
		return;
	{
		__u64 key = (__u64)sk;
		struct gen_socktrack_val *owner = bpf_map_lookup_elem(&gen_socktrack, &key);

		s->ev.aux[GEN_BOUND(i, GEN_MAX_ARGS)] = key; /* for TrackSock/UntrackSock */
		if (owner) { /* a tracked sock: the event names its owner (e.g. from softirq context) */
			s->ev.key = owner->key;
			s->ev.flags &= ~GEF_NOPROC;
			s->key_done = 1;
		}
	}
	si->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	si->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	si->type = BPF_CORE_READ(sk, sk_type);
	si->protocol = BPF_CORE_READ(sk, sk_protocol);
	si->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	si->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	si->mark = BPF_CORE_READ(sk, sk_mark);
	si->priority = BPF_CORE_READ(sk, sk_priority);
	si->cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	if (si->family == 2) {
		__u32 sa = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr), da = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		__builtin_memcpy(si->saddr, &sa, 4);
		__builtin_memcpy(si->daddr, &da, 4);
	} else if (si->family == 10) {
		BPF_CORE_READ_INTO(&si->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&si->daddr, sk, __sk_common.skc_v6_daddr);
	}
	s->ev.vals[GEN_BOUND(i, GEN_MAX_ARGS)] = si->family;
	gen_put_info(s, i, si, sizeof(*si));
}

static __always_inline void gen_read_skb(struct gen_scratch *s, __u32 i, struct sk_buff *skb)
{
	struct gen_sock_info *si = &s->sock;
	unsigned char *head;
	__u16 nh, th, proto;
	__u8 l4 = 0;

	__builtin_memset(si, 0, sizeof(*si));
	if (!skb)
		return;
	head = BPF_CORE_READ(skb, head);
	nh = BPF_CORE_READ(skb, network_header);
	th = BPF_CORE_READ(skb, transport_header);
	proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	si->len = BPF_CORE_READ(skb, len);
	si->mark = BPF_CORE_READ(skb, mark);
	si->priority = BPF_CORE_READ(skb, priority);
	if (proto == 0x0800) {
		struct iphdr ip = {};

		bpf_probe_read_kernel(&ip, sizeof(ip), head + nh);
		si->family = 2;
		l4 = ip.protocol;
		__builtin_memcpy(si->saddr, &ip.saddr, 4);
		__builtin_memcpy(si->daddr, &ip.daddr, 4);
	} else if (proto == 0x86DD) {
		struct ipv6hdr ip6 = {};

		bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh);
		si->family = 10;
		l4 = ip6.nexthdr;
		bpf_probe_read_kernel(si->saddr, 16, &ip6.saddr);
		bpf_probe_read_kernel(si->daddr, 16, &ip6.daddr);
	}
	si->protocol = l4;
	if ((l4 == 6 || l4 == 17) && th != (__u16)~0U) {
		__u16 ports[2] = {};

		bpf_probe_read_kernel(ports, sizeof(ports), head + th);
		si->sport = bpf_ntohs(ports[0]);
		si->dport = bpf_ntohs(ports[1]);
	}
	s->ev.vals[GEN_BOUND(i, GEN_MAX_ARGS)] = si->family; /* GF_ADDR and Family read it */
	gen_put_info(s, i, si, sizeof(*si));
}

static __always_inline void gen_read_cred(struct gen_scratch *s, __u32 i, struct cred *c)
{
	struct gen_cred_info *ci = &s->cred;

	__builtin_memset(ci, 0, sizeof(*ci));
	if (!c)
		return;
	ci->uid = BPF_CORE_READ(c, uid.val);
	ci->gid = BPF_CORE_READ(c, gid.val);
	ci->euid = BPF_CORE_READ(c, euid.val);
	ci->egid = BPF_CORE_READ(c, egid.val);
	ci->suid = BPF_CORE_READ(c, suid.val);
	ci->sgid = BPF_CORE_READ(c, sgid.val);
	ci->fsuid = BPF_CORE_READ(c, fsuid.val);
	ci->fsgid = BPF_CORE_READ(c, fsgid.val);
	ci->securebits = BPF_CORE_READ(c, securebits);
	ci->userns_inum = BPF_CORE_READ(c, user_ns, ns.inum);
	/* kernel_cap_t: u64 val since 6.3, u32 cap[2] before; same 8 bytes (see gen_check_caps) */
	bpf_probe_read_kernel(&ci->cap_permitted, 8, __builtin_preserve_access_index(&c->cap_permitted));
	bpf_probe_read_kernel(&ci->cap_effective, 8, __builtin_preserve_access_index(&c->cap_effective));
	bpf_probe_read_kernel(&ci->cap_inheritable, 8, __builtin_preserve_access_index(&c->cap_inheritable));
	gen_put_info(s, i, ci, sizeof(*ci));
}

static __always_inline void gen_read_userns(struct gen_scratch *s, __u32 i, struct user_namespace *ns)
{
	struct gen_userns_info *ui = &s->userns;

	__builtin_memset(ui, 0, sizeof(*ui));
	if (!ns)
		return;
	ui->level = BPF_CORE_READ(ns, level);
	ui->owner = BPF_CORE_READ(ns, owner.val);
	ui->group = BPF_CORE_READ(ns, group.val);
	ui->inum = BPF_CORE_READ(ns, ns.inum);
	gen_put_info(s, i, ui, sizeof(*ui));
}

static __always_inline void gen_set_strlen(struct gen_scratch *s, __u32 i, long n)
{
	if (i >= GEN_MAX_ARGS)
		return;
	if (n <= 0) {
		s->ev.lens[i] = 0;
		return;
	}
	n -= 1; /* the NUL */
	if (n >= GEN_STR_MAX - 1)
		s->ev.trunc |= 1 << i;
	s->ev.lens[i] = n;
}

/* kernel/module/internal.h: not in every kernel's BTF (no modules) nor in vmlinux.h; CO-RE relocated,
 * guarded by bpf_core_field_exists so the read is dead code where the type is missing */
struct load_info___lanner {
	const char *name;
	bool sig_ok;
} __attribute__((preserve_access_index));

static __always_inline void gen_read_module(struct gen_scratch *s, __u32 i, __u64 v, __u32 type)
{
	long n = 0;

	if (!v || i >= GEN_MAX_ARGS)
		return;
	s->ev.aux[i] = 2;
	if (type == GA_MODULE) {
		struct module *m = (struct module *)v;

		n = bpf_probe_read_kernel_str(s->ev.str[i].s, sizeof(m->name) < GEN_STR_MAX ? sizeof(m->name) : GEN_STR_MAX,
					      __builtin_preserve_access_index(&m->name));
		s->ev.vals[i] = BPF_CORE_READ(m, taints);
	} else {
		struct load_info___lanner *li = (struct load_info___lanner *)v;

		s->ev.vals[i] = 0;
		if (bpf_core_field_exists(li->name))
			n = bpf_probe_read_kernel_str(s->ev.str[i].s, GEN_STR_MAX, BPF_CORE_READ(li, name));
		if (bpf_core_field_exists(li->sig_ok))
			s->ev.aux[i] = BPF_CORE_READ(li, sig_ok);
	}
	gen_set_strlen(s, i, n);
}

/* GA_BPF_ATTR, GA_BPF_MAP, GA_PERF_EVENT: the fields Tetragon reports, into their info structs (generic.h) */
static __always_inline void gen_read_bpf_obj(struct gen_scratch *s, __u32 i, __u64 v, __u32 type)
{
	if (!v || i >= GEN_MAX_ARGS)
		return;
	if (type == GA_BPF_ATTR) { /* bpf_check's attr: the kernel's copy of the BPF_PROG_LOAD attributes */
		union bpf_attr *attr = (union bpf_attr *)v;
		struct gen_bpf_attr_info *bi = &s->bpf_attr;

		__builtin_memset(bi, 0, sizeof(*bi));
		bi->prog_type = BPF_CORE_READ(attr, prog_type);
		bi->insn_cnt = BPF_CORE_READ(attr, insn_cnt);
		bpf_probe_read_kernel(bi->prog_name, sizeof(bi->prog_name), __builtin_preserve_access_index(&attr->prog_name));
		gen_put_info(s, i, bi, sizeof(*bi));
	} else if (type == GA_BPF_MAP) {
		struct bpf_map *m = (struct bpf_map *)v;
		struct gen_bpf_map_info *mi = &s->bpf_map;

		__builtin_memset(mi, 0, sizeof(*mi));
		mi->map_type = BPF_CORE_READ(m, map_type);
		mi->key_size = BPF_CORE_READ(m, key_size);
		mi->value_size = BPF_CORE_READ(m, value_size);
		mi->max_entries = BPF_CORE_READ(m, max_entries);
		bpf_probe_read_kernel(mi->name, sizeof(mi->name), __builtin_preserve_access_index(&m->name));
		gen_put_info(s, i, mi, sizeof(*mi));
	} else {
		struct perf_event *pe = (struct perf_event *)v;
		struct gen_perf_event_info *pi = &s->perf;
		__u64 func;

		__builtin_memset(pi, 0, sizeof(*pi));
		pi->type = BPF_CORE_READ(pe, attr.type);
		pi->config = BPF_CORE_READ(pe, attr.config);
		pi->probe_offset = BPF_CORE_READ(pe, attr.probe_offset);
		func = BPF_CORE_READ(pe, attr.kprobe_func);
		/* PERF_TYPE_MAX (6): the fixed types give config1 other meanings (a breakpoint's address, raw bits) */
		if (pi->type >= 6 && func &&
		    bpf_probe_read_user_str(pi->kprobe_func, sizeof(pi->kprobe_func), (void *)func) < 0)
			bpf_probe_read_kernel_str(pi->kprobe_func, sizeof(pi->kprobe_func), (void *)func);
		gen_put_info(s, i, pi, sizeof(*pi));
	}
}

/* the iov pointer of struct iov_iter before 6.4 (since: __iov) */
struct iov_iter___lanner_old {
	const struct iovec *iov;
} __attribute__((preserve_access_index));

/* GA_IOV_ITER: the user bytes of the iterator's first segment from its current position (ITER_UBUF: ubuf;
 * ITER_IOVEC: __iov[0] / iov[0]), up to the string slot; aux = the segment's size. The iter_type numbers
 * changed (6.1: ITER_IOVEC 0 ... ITER_UBUF 6; 6.5+: ITER_UBUF 0, ITER_IOVEC 1) and are relocated. Other
 * iterators (kernel kvec/bvec...) give no bytes. */
static __always_inline void gen_read_iov_iter(struct gen_scratch *s, __u32 i, struct iov_iter *it)
{
	long ubuf = -1, iovec = -1;
	__u64 base = 0, size = 0, off, count;
	__u8 type;

	if (!it || i >= GEN_MAX_ARGS || !bpf_core_field_exists(it->iter_type))
		return;
	type = BPF_CORE_READ(it, iter_type);
	off = BPF_CORE_READ(it, iov_offset);
	count = BPF_CORE_READ(it, count);
	if (bpf_core_enum_value_exists(enum iter_type, ITER_UBUF))
		ubuf = bpf_core_enum_value(enum iter_type, ITER_UBUF);
	if (bpf_core_enum_value_exists(enum iter_type, ITER_IOVEC))
		iovec = bpf_core_enum_value(enum iter_type, ITER_IOVEC);
	if (type == ubuf) {
		base = (__u64)BPF_CORE_READ(it, ubuf) + off;
		size = count;
	} else if (type == iovec) {
		const struct iovec *iov = NULL;
		struct iovec first = {};

		if (bpf_core_field_exists(it->__iov))
			iov = BPF_CORE_READ(it, __iov);
		else if (bpf_core_field_exists(((struct iov_iter___lanner_old *)it)->iov))
			iov = BPF_CORE_READ((struct iov_iter___lanner_old *)it, iov);
		if (iov && bpf_probe_read_kernel(&first, sizeof(first), iov) == 0 && first.iov_len > off) {
			base = (__u64)first.iov_base + off;
			size = first.iov_len - off;
			if (size > count)
				size = count;
		}
	}
	s->ev.aux[i] = size;
	if (size > GEN_STR_MAX - 1) {
		size = GEN_STR_MAX - 1;
		s->ev.trunc |= 1 << i;
	}
	if (size && bpf_probe_read_user(s->ev.str[i].s, size & 255, (void *)base) == 0)
		s->ev.lens[i] = size;
}

static long gen_read_arg(__u32 i, void *data)
{
	struct gen_read_ctx *rc = data;
	struct gen_hook *hook = rc->hook;
	struct gen_scratch *s = rc->s;
	struct gen_arg *a;
	__u64 v, p;
	long n;

	if (i >= GEN_MAX_ARGS)
		return 1;
	if (i >= hook->nargs)
		return 1;
	i = GEN_BOUND(i, GEN_MAX_ARGS);
	a = &hook->args[i];
	v = gen_raw(rc->ctx, s, hook, a);
	rc->raw[i] = v;
	s->ev.vals[i] = gen_extend(v, a->size, a->is_signed);
	s->ev.lens[i] = 0;
	if ((a->type == GA_INT || a->type == GA_NONE || a->type == GA_USTR || a->type == GA_KSTR ||
	     a->type == GA_DATALOC || a->type == GA_INLINE_STR) && !(a->flags & GAF_ZERO)) {
		/* an integer (its slot is not used) or a plain string not used as a hash key: bytes past the NUL
		 * are never read (LPM lookups stop at the key's prefixlen, events at lens[i]); the first 16
		 * bytes are the rate-limit key's */
		__builtin_memset(s->ev.str[i].s, 0, 16);
	} else {
		__builtin_memset(&s->ev.str[i], 0, sizeof(s->ev.str[i]));
	}
	switch (a->type) {
	case GA_USTR:
		n = bpf_probe_read_user_str(s->ev.str[i].s, GEN_STR_MAX, (void *)v);
		gen_set_strlen(s, i, n);
		break;
	case GA_KSTR:
		n = bpf_probe_read_kernel_str(s->ev.str[i].s, GEN_STR_MAX, (void *)v);
		if (n < 0) /* a kprobe's char * may be a user pointer (syscall wrappers) */
			n = bpf_probe_read_user_str(s->ev.str[i].s, GEN_STR_MAX, (void *)v);
		gen_set_strlen(s, i, n);
		break;
	case GA_KIOCB: /* the kiocb's file, reported as a file arg */
		v = v ? (__u64)BPF_CORE_READ((struct kiocb *)v, ki_filp) : 0;
		s->ev.vals[i] = 0;
		__attribute__((fallthrough));
	case GA_FILE: {
		struct file *f = (struct file *)v;

		if (!f)
			break;
		s->ev.aux[i] = BPF_CORE_READ(f, f_flags);
		s->ev.vals[i] = BPF_CORE_READ(f, f_inode, i_mode);
		gen_read_path(s, i, &f->f_path, NULL);
		break;
	}
	case GA_PATH: {
		struct path *pa = (struct path *)v;

		if (!pa)
			break;
		s->ev.vals[i] = BPF_CORE_READ(pa, dentry, d_inode, i_mode);
		gen_read_path(s, i, pa, NULL);
		break;
	}
	case GA_DENTRY:
		if (v)
			gen_read_path(s, i, NULL, (struct dentry *)v);
		break;
	case GA_BINPRM: {
		struct file *f = BPF_CORE_READ((struct linux_binprm *)v, file);

		if (f) {
			s->ev.vals[i] = BPF_CORE_READ(f, f_inode, i_mode);
			gen_read_path(s, i, &f->f_path, NULL);
		}
		break;
	}
	case GA_CRED:
		gen_read_cred(s, i, (struct cred *)v);
		break;
	case GA_SOCK:
		gen_read_sock(s, i, (struct sock *)v);
		break;
	case GA_SOCKET:
		gen_read_sock(s, i, v ? BPF_CORE_READ((struct socket *)v, sk) : NULL);
		break;
	case GA_SKB:
		gen_read_skb(s, i, (struct sk_buff *)v);
		break;
	case GA_USERNS:
		gen_read_userns(s, i, (struct user_namespace *)v);
		break;
	case GA_MODULE:
	case GA_LOAD_INFO:
		gen_read_module(s, i, v, a->type);
		break;
	case GA_BPF_ATTR:
	case GA_BPF_MAP:
	case GA_PERF_EVENT:
		gen_read_bpf_obj(s, i, v, a->type);
		break;
	case GA_IOV_ITER:
		gen_read_iov_iter(s, i, (struct iov_iter *)v);
		break;
	case GA_NETDEV:
		if (v) {
			n = bpf_probe_read_kernel_str(s->ev.str[i].s, 16, __builtin_preserve_access_index(
							     &((struct net_device *)v)->name));
			gen_set_strlen(s, i, n);
		}
		break;
	case GA_DATALOC:
		p = rc->ctx + (v & 0xffff);
		n = bpf_probe_read_kernel_str(s->ev.str[i].s, GEN_STR_MAX, (void *)p);
		gen_set_strlen(s, i, n);
		break;
	case GA_INLINE_STR:
		n = bpf_probe_read_kernel_str(s->ev.str[i].s, a->size < GEN_STR_MAX ? a->size : GEN_STR_MAX,
					      (void *)(rc->ctx + a->off));
		gen_set_strlen(s, i, n);
		s->ev.vals[i] = 0;
		break;
	case GA_UBUF:
	case GA_IOVEC: {
		__u32 si = a->size_arg ? a->size_arg - 1 : 0;
		__u64 size = 0;

		/* the size arg is read first if it comes later in the list */
		if (si < GEN_MAX_ARGS && si < hook->nargs) {
			if (si < i)
				size = s->ev.vals[si];
			else
				size = gen_extend(gen_raw(rc->ctx, s, hook, &hook->args[si]), hook->args[si].size,
						  hook->args[si].is_signed);
		}
		if (a->type == GA_IOVEC) {
			struct iovec iov = {};

			if (size == 0)
				break;
			bpf_probe_read_user(&iov, sizeof(iov), (void *)v);
			v = (__u64)iov.iov_base;
			size = iov.iov_len;
		}
		s->ev.aux[i] = size;
		if (size > GEN_STR_MAX - 1) {
			size = GEN_STR_MAX - 1;
			s->ev.trunc |= 1 << i;
		}
		if (size && bpf_probe_read_user(s->ev.str[i].s, size & 255, (void *)v) == 0)
			s->ev.lens[i] = size;
		break;
	}
	case GA_FD:
		gen_read_fd(s, i, s->ev.vals[i]);
		break;
	case GA_USOCKADDR:
	case GA_KSOCKADDR: {
		struct sockaddr_in6 sa = {};

		if (a->type == GA_KSOCKADDR)
			bpf_probe_read_kernel(&sa, sizeof(sa), (void *)v);
		else
			bpf_probe_read_user(&sa, sizeof(sa), (void *)v);
		s->ev.vals[i] = sa.sin6_family;
		s->ev.aux[i] = bpf_ntohs(sa.sin6_port);
		if (sa.sin6_family == 2 /* AF_INET */) {
			struct sockaddr_in *in = (struct sockaddr_in *)&sa;

			__builtin_memcpy(s->ev.str[i].s, &in->sin_addr, 4);
			s->ev.lens[i] = 4;
		} else if (sa.sin6_family == 10 /* AF_INET6 */) {
			__builtin_memcpy(s->ev.str[i].s, &sa.sin6_addr, 16);
			s->ev.lens[i] = 16;
		}
		break;
	}
	}
	return 0;
}

/* ----------------------------------------------------------------------------- string matching */
struct gen_rev_ctx {
	char *src;
	char *dst;
	__u32 len;
};

static long gen_rev_step(__u32 j, void *data)
{
	struct gen_rev_ctx *r = data;
	__u32 from;

	if (j >= r->len || r->len > GEN_STR_MAX)
		return 1;
	from = r->len - 1 - j;
	if (from >= GEN_STR_MAX || j >= GEN_STR_MAX)
		return 1;
	j = GEN_BOUND(j, GEN_STR_MAX);
	from = GEN_BOUND(from, GEN_STR_MAX);
	r->dst[j] = r->src[from];
	return 0;
}

static __always_inline void gen_reverse(struct gen_str *dst, struct gen_str *src, __u32 len)
{
	struct gen_rev_ctx r = { .src = src->s, .dst = dst->s, .len = len };

	__builtin_memset(dst, 0, sizeof(*dst));
	bpf_loop(GEN_STR_MAX, gen_rev_step, &r, 0);
}

/* exact match of str (len bytes, zero padded) in hash set set_id */
/* str is the key itself (its header is set here): the string must be zero padded (GAF_ZERO) */
static __always_inline bool gen_str_in_set(struct gen_scratch *s, struct gen_str *str, __u32 len, bool trunc,
					   __u16 set_id)
{
	str->prefixlen = trunc ? 0xffffffff : 0;
	str->set_hi = set_id >> 8;
	str->set_lo = set_id & 0xff;
	if (trunc || len > GEN_STR_KEY128 - GEN_STR_HDR)
		return bpf_map_lookup_elem(&gen_str_set, str) != NULL;
	if (len <= GEN_STR_KEY32 - GEN_STR_HDR)
		return bpf_map_lookup_elem(&gen_str_set32, str) != NULL;
	if (len <= GEN_STR_KEY64 - GEN_STR_HDR)
		return bpf_map_lookup_elem(&gen_str_set64, str) != NULL;
	return bpf_map_lookup_elem(&gen_str_set128, str) != NULL;
}

/* some prefix of str (len bytes) is in LPM set set_id */
/* str is the key itself (its header is set here); the trie reads no byte past prefixlen */
static __always_inline bool gen_str_in_lpm(struct gen_scratch *s, struct gen_str *str, __u32 len, __u16 set_id)
{
	if (len > GEN_STR_MAX)
		len = GEN_STR_MAX;
	str->prefixlen = 16 + 8 * len;
	str->set_hi = set_id >> 8;
	str->set_lo = set_id & 0xff;
	return bpf_map_lookup_elem(&gen_str_lpm, str) != NULL;
}

/* the address of width bytes at str offset off in CIDR LPM set set_id */
static __always_inline bool gen_addr_in_lpm(struct gen_scratch *s, struct gen_str *str, __u32 off, __u32 width,
					    __u16 set_id)
{
	__builtin_memset(&s->key, 0, sizeof(s->key));
	if (off > GEN_STR_MAX - 16)
		return false;
	bpf_probe_read_kernel(s->key.s, 16, &str->s[off & 127]);
	s->key.prefixlen = 16 + 8 * (width & 31);
	s->key.set_hi = set_id >> 8;
	s->key.set_lo = set_id & 0xff;
	return bpf_map_lookup_elem(&gen_str_lpm, &s->key) != NULL;
}

/* ------------------------------------------------------------------------------- selector checks */
struct gen_sel_ctx {
	struct gen_hook *hook;
	struct gen_scratch *s;
	struct gen_selector *sel;
	__u32 phase_ret;  /* 1: evaluating matchReturnArgs only */
	__u32 ok;
	__s32 match;      /* first matching selector, -1 none */
	__u32 pad;
};

static __always_inline bool gen_int_match(struct gen_filter *f, __u64 v)
{
	bool hit = false;

	if (f->set_id) {
		struct gen_int_key k = { .set_id = f->set_id, .val = v };

		hit = bpf_map_lookup_elem(&gen_int_set, &k) != NULL;
	}
#pragma unroll
	for (int r = 0; r < GEN_MAX_RANGES; r++) {
		if (hit || r >= f->nranges)
			break;
		if (f->kind == GF_MASK) {
			hit = (v & f->lo[r]) != 0;
		} else if (f->flags & GFF_SIGNED) {
			hit = (__s64)v >= (__s64)f->lo[r] && (__s64)v <= (__s64)f->hi[r];
		} else {
			hit = v >= f->lo[r] && v <= f->hi[r];
		}
	}
	return hit;
}

static long gen_filter_step(__u32 j, void *data)
{
	struct gen_sel_ctx *c = data;
	struct gen_scratch *s = c->s;
	struct gen_filter *f;
	__u32 a, len;
	bool hit = false, trunc;

	if (j >= GEN_MAX_FILTERS || j >= c->sel->nfilters)
		return 1;
	j = GEN_BOUND(j, GEN_MAX_FILTERS);
	f = &c->sel->filters[j];
	if (!!(f->flags & GFF_RET) != !!c->phase_ret)
		return 0;
	a = f->arg;
	if (a == GEN_RET_ARG) {
		hit = gen_int_match(f, (__u64)s->ev.ret);
		goto done;
	}
	if (a >= GEN_MAX_ARGS)
		return 0;
	a = GEN_BOUND(a, GEN_MAX_ARGS);
	len = s->ev.lens[a];
	if (len > GEN_STR_MAX)
		len = GEN_STR_MAX;
	trunc = s->ev.trunc & (1 << a);
	switch (f->kind) {
	case GF_INT:
	case GF_MASK: {
		__u64 v = (f->flags & GFF_AUX) ? s->ev.aux[a] : s->ev.vals[a];

		if (f->flags & GFF_SUB) {
			v = 0;
			if (f->soff <= GEN_STR_MAX - 8)
				bpf_probe_read_kernel(&v, f->ssize <= 8 ? f->ssize & 15 : 8, &s->ev.str[a].s[f->soff & 255]);
		}
		hit = gen_int_match(f, v);
		break;
	}
	case GF_STR_EQ:
		hit = gen_str_in_set(s, &s->ev.str[a], len, trunc, f->set_id);
		break;
	case GF_STR_PREFIX:
		hit = gen_str_in_lpm(s, &s->ev.str[a], len, f->set_id);
		break;
	case GF_STR_POSTFIX:
		if (!(s->rev_done & (1 << a))) {
			gen_reverse(&s->rev[a], &s->ev.str[a], len);
			s->rev_done |= 1 << a;
		}
		hit = gen_str_in_lpm(s, &s->rev[a], len, f->set_id);
		break;
	case GF_ADDR:
		if (s->ev.vals[a] == 2 && f->set_id)
			hit = gen_addr_in_lpm(s, &s->ev.str[a], f->soff, 4, f->set_id);
		else if (s->ev.vals[a] == 10 && f->set_id2)
			hit = gen_addr_in_lpm(s, &s->ev.str[a], f->soff, 16, f->set_id2);
		break;
	}
done:
	if (f->flags & GFF_NEGATE)
		hit = !hit;
	if (!hit) {
		c->ok = 0;
		return 1;
	}
	return 0;
}

static __always_inline __u32 gen_ns_inum(struct task_struct *task, __u32 type)
{
	struct nsproxy *nsp = BPF_CORE_READ(task, nsproxy);

	switch (type) {
	case GNS_UTS: return BPF_CORE_READ(nsp, uts_ns, ns.inum);
	case GNS_IPC: return BPF_CORE_READ(nsp, ipc_ns, ns.inum);
	case GNS_MNT: return BPF_CORE_READ(nsp, mnt_ns, ns.inum);
	case GNS_PID: {
		struct pid *p = BPF_CORE_READ(task, thread_pid);
		__u32 level = BPF_CORE_READ(p, level);

		return BPF_CORE_READ(p, numbers[level].ns, ns.inum);
	}
	case GNS_PID_FOR_CHILDREN: return BPF_CORE_READ(nsp, pid_ns_for_children, ns.inum);
	case GNS_NET: return BPF_CORE_READ(nsp, net_ns, ns.inum);
	case GNS_TIME: return BPF_CORE_READ(nsp, time_ns, ns.inum);
	case GNS_TIME_FOR_CHILDREN: return BPF_CORE_READ(nsp, time_ns_for_children, ns.inum);
	case GNS_CGROUP: return BPF_CORE_READ(nsp, cgroup_ns, ns.inum);
	case GNS_USER: return BPF_CORE_READ(task, cred, user_ns, ns.inum);
	}
	return 0;
}

static __always_inline bool gen_pid_in(struct gen_pids *e, __u32 pid)
{
	bool hit = false;

#pragma unroll
	for (int k = 0; k < GEN_MAX_PIDS; k++)
		if (k < e->n && e->vals[k] == pid)
			hit = true;
	return hit;
}

/* one matchPIDs entry */
static __always_inline bool gen_check_pid_entry(struct gen_pids *e)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	bool hit;

	if (e->flags & GPF_NSPID) {
		struct pid *p = BPF_CORE_READ(task, group_leader, thread_pid);
		__u32 level = BPF_CORE_READ(p, level);

		pid = BPF_CORE_READ(p, numbers[level].nr);
	}
	hit = gen_pid_in(e, pid);
	if (!hit && (e->flags & GPF_FOLLOW) && !(e->flags & GPF_NSPID)) {
		__u32 cur = pid;

#pragma unroll
		for (int l = 0; l < GEN_PARENT_LEVELS; l++) {
			struct execve_entry *x = bpf_map_lookup_elem(&execve_map, &cur);

			if (!x || hit)
				break;
			cur = x->parent.pid;
			if (!cur)
				break;
			hit = gen_pid_in(e, cur);
		}
	}
	return e->op == GOP_IN ? hit : !hit;
}

/* matchPIDs: every entry holds (Tetragon ANDs them) */
static __always_inline bool gen_check_pids(struct gen_selector *sel)
{
	if (!gen_check_pid_entry(&sel->pids[0]))
		return false;
	return !sel->pids[1].op || gen_check_pid_entry(&sel->pids[1]);
}

/* matchBinaries followChildren: an ancestor's binary (execve_map, up to GEN_PARENT_LEVELS parents) is in
 * the set; the ancestor's binary is copied into s->binrev (Postfix, which needs it, is not allowed with
 * followChildren) */
static __always_inline bool gen_ancestor_binary(struct gen_scratch *s, struct gen_selector *sel, bool lpm)
{
	__u32 cur = bpf_get_current_pid_tgid() >> 32;
	bool hit = false;

#pragma unroll
	for (int l = 0; l < GEN_PARENT_LEVELS; l++) {
		struct execve_entry *e = bpf_map_lookup_elem(&execve_map, &cur);
		__u32 blen;

		if (!e || hit)
			break;
		cur = e->parent.pid;
		if (!cur)
			break;
		e = bpf_map_lookup_elem(&execve_map, &cur);
		if (!e)
			break;
		blen = e->binary_len;
		if (blen > GEN_STR_MAX - 1)
			blen = GEN_STR_MAX - 1;
		__builtin_memset(&s->binrev, 0, sizeof(s->binrev));
		bpf_probe_read_kernel(s->binrev.s, blen & 255, e->binary);
		hit = lpm ? gen_str_in_lpm(s, &s->binrev, blen, sel->bin_set)
			  : gen_str_in_set(s, &s->binrev, blen, false, sel->bin_set);
	}
	return hit;
}

#define GEN_BIN_DONE (1U << 30)
#define GEN_BINREV_DONE (1U << 31)

/* the current process's binary into s->bin (zero padded: a hash key), once per event */
static __always_inline void gen_load_binary(struct gen_scratch *s)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct execve_entry *e;
	__u32 blen;

	if (s->rev_done & GEN_BIN_DONE)
		return;
	s->rev_done |= GEN_BIN_DONE;
	__builtin_memset(&s->bin, 0, sizeof(s->bin));
	s->bin_len = 0;
	e = bpf_map_lookup_elem(&execve_map, &tgid);
	if (!e)
		return;
	blen = e->binary_len;
	if (blen > GEN_STR_MAX - 1)
		blen = GEN_STR_MAX - 1;
	bpf_probe_read_kernel(s->bin.s, blen & 255, e->binary);
	s->bin_len = blen;
}

static __always_inline bool gen_check_binary(struct gen_scratch *s, struct gen_selector *sel)
{
	__u32 len;
	bool hit = false;

	gen_load_binary(s);
	len = s->bin_len;

	switch (sel->bin_op) {
	case GOP_IN:
	case GOP_NOTIN:
		hit = gen_str_in_set(s, &s->bin, len, false, sel->bin_set);
		if (!hit && sel->bin_follow)
			hit = gen_ancestor_binary(s, sel, false);
		break;
	case GOP_PREFIX:
	case GOP_NOTPREFIX:
		hit = gen_str_in_lpm(s, &s->bin, len, sel->bin_set);
		if (!hit && sel->bin_follow)
			hit = gen_ancestor_binary(s, sel, true);
		break;
	case GOP_POSTFIX:
	case GOP_NOTPOSTFIX:
		if (!(s->rev_done & GEN_BINREV_DONE)) {
			gen_reverse(&s->binrev, &s->bin, len);
			s->rev_done |= GEN_BINREV_DONE;
		}
		hit = gen_str_in_lpm(s, &s->binrev, len, sel->bin_set);
		break;
	default:
		return true;
	}
	if (sel->bin_op == GOP_NOTIN || sel->bin_op == GOP_NOTPREFIX || sel->bin_op == GOP_NOTPOSTFIX)
		hit = !hit;
	return hit;
}

/* the current task's capability set of type t (0 effective, 1 inheritable, 2 permitted) */
static __always_inline __u64 gen_task_caps(struct task_struct *task, __u32 t)
{
	const struct cred *cred = BPF_CORE_READ(task, cred);
	const kernel_cap_t *cap;
	__u64 caps = 0;

	/* kernel_cap_t is a u64 "val" since 6.3 and a u32 cap[2] before (same 8 bytes): read the field
	 * whole, by its relocated offset, so the program loads on both (Debian 6.1 has the array) */
	if (t == 1)
		cap = __builtin_preserve_access_index(&cred->cap_inheritable);
	else if (t == 2)
		cap = __builtin_preserve_access_index(&cred->cap_permitted);
	else
		cap = __builtin_preserve_access_index(&cred->cap_effective);
	bpf_probe_read_kernel(&caps, sizeof(caps), cap);
	return caps;
}

/* isNamespaceCapability: only tasks outside the host user namespace (userns = its inode) */
static __always_inline bool gen_in_userns(struct task_struct *task, __u32 userns)
{
	return userns && BPF_CORE_READ(task, cred, user_ns, ns.inum) == userns;
}

static __always_inline bool gen_check_caps(struct gen_selector *sel)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	bool hit;

	if (gen_in_userns(task, sel->cap_userns))
		return false;
	hit = (gen_task_caps(task, sel->cap_type) & sel->cap_mask) != 0;
	return sel->cap_op == GOP_IN ? hit : !hit;
}

/* matchNamespaceChanges / matchCapabilityChanges: the state at exec lives in the process's
 * execve_map entry (process sensor); a process without it (seeded from /proc at agent start) gets the
 * current state now, so the filters report changes from here on */
static __always_inline void gen_take_ns(struct execve_entry *e, struct task_struct *task)
{
	__u32 *ns = (__u32 *)&e->exec_ns;

#pragma unroll
	for (int t = 0; t <= GNS_USER; t++)
		ns[t] = gen_ns_inum(task, t);
}

static __always_inline void gen_take_caps(struct execve_entry *e, struct task_struct *task)
{
#pragma unroll
	for (int t = 0; t < 3; t++)
		e->exec_caps[t] = gen_task_caps(task, t);
}

static __always_inline struct execve_entry *gen_exec_state(struct task_struct *task, bool *fresh)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct execve_entry *e = bpf_map_lookup_elem(&execve_map, &tgid);

	*fresh = false;
	if (e && !(e->flags & LANNER_ENTRY_EXEC_STATE)) {
		gen_take_ns(e, task);
		gen_take_caps(e, task);
		e->flags |= LANNER_ENTRY_EXEC_STATE;
		*fresh = true;
	}
	return e;
}

/* a namespace of nsch_mask differs from the one recorded at exec (or at the last reported change) */
static __always_inline bool gen_check_ns_changes(struct gen_selector *sel)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	bool fresh;
	struct execve_entry *e = gen_exec_state(task, &fresh);
	__u32 *ns;

	if (!e || fresh)
		return false;
	ns = (__u32 *)&e->exec_ns;
#pragma unroll
	for (int t = 0; t <= GNS_USER; t++)
		if ((sel->nsch_mask & (1 << t)) && ns[t] && ns[t] != gen_ns_inum(task, t))
			return true;
	return false;
}

/* In: one of the listed capabilities of capch_type was gained or lost since exec; NotIn: only others */
static __always_inline bool gen_check_cap_changes(struct gen_selector *sel)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	bool fresh;
	struct execve_entry *e;
	__u32 t = sel->capch_type;
	__u64 was, now;

	if (gen_in_userns(task, sel->capch_userns) || t > 2)
		return false;
	e = gen_exec_state(task, &fresh);
	if (!e || fresh)
		return false;
	was = e->exec_caps[t];
	now = gen_task_caps(task, t);
	if ((was ^ now) & sel->capch_mask)
		return sel->capch_op == GOP_IN;
	if (was != now)
		return sel->capch_op == GOP_NOTIN;
	return false;
}

/* after a selector matched on a change: the current state is the new reference, as in Tetragon */
static __always_inline void gen_changes_seen(struct gen_selector *sel)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct execve_entry *e = bpf_map_lookup_elem(&execve_map, &tgid);

	if (!e)
		return;
	if (sel->nsch_op)
		gen_take_ns(e, task);
	if (sel->capch_op)
		gen_take_caps(e, task);
}

static __always_inline bool gen_check_ns(struct gen_selector *sel)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

#pragma unroll
	for (int n = 0; n < GEN_MAX_NS; n++) {
		struct gen_ns *ns = &sel->ns[n];
		__u32 inum;
		bool hit = false;

		if (n >= sel->nns)
			break;
		inum = gen_ns_inum(task, ns->type);
#pragma unroll
		for (int k = 0; k < GEN_MAX_NS_VALUES; k++)
			if (k < ns->nvals && ns->vals[k] == inum)
				hit = true;
		if (ns->op == GOP_NOTIN)
			hit = !hit;
		if (!hit)
			return false;
	}
	return true;
}

static long gen_selector_step(__u32 i, void *data)
{
	struct gen_sel_ctx *c = data;
	struct gen_selector *sel;

	if (i >= GEN_MAX_SELECTORS || i >= c->hook->nselectors)
		return 1;
	i = GEN_BOUND(i, GEN_MAX_SELECTORS);
	sel = &c->hook->sel[i];
	c->sel = sel;
	c->ok = 1;
	if (sel->pids[0].op && !gen_check_pids(sel))
		return 0;
	if (sel->bin_op && !gen_check_binary(c->s, sel))
		return 0;
	if (sel->nns && !gen_check_ns(sel))
		return 0;
	if (sel->cap_op && !gen_check_caps(sel))
		return 0;
	if (sel->nsch_op && !gen_check_ns_changes(sel))
		return 0;
	if (sel->capch_op && !gen_check_cap_changes(sel))
		return 0;
	bpf_loop(GEN_MAX_FILTERS, gen_filter_step, c, 0);
	if (!c->ok)
		return 0;
	c->match = i;
	if (sel->nsch_op || sel->capch_op)
		gen_changes_seen(sel);
	return 1;
}

/* --------------------------------------------------------------------------------------- actions */
static __always_inline bool gen_rate_limited(struct gen_scratch *s, struct gen_selector *sel)
{
	struct gen_ratelimit_key *k = &s->rl;
	__u64 now = bpf_ktime_get_ns(), *last;

	__builtin_memset(k, 0, sizeof(*k));
	k->hook_id = s->ev.hook_id;
	k->selector = s->ev.selector;
#pragma unroll
	for (int i = 0; i < GEN_MAX_ARGS; i++) {
		k->vals[i] = s->ev.vals[i];
		__builtin_memcpy(&k->head[i][0], s->ev.str[i].s, 16);
	}
	last = bpf_map_lookup_elem(&gen_ratelimit, k);
	if (last && now - *last < sel->rate_limit_ns)
		return true;
	bpf_map_update_elem(&gen_ratelimit, k, &now, BPF_ANY);
	return false;
}

/* Post: the record into the policy ring (lanner_output: the reader is woken only by the record that takes
 * the unread data past 1/8 of the ring). */
static __always_inline int gen_output(void *data, __u64 size)
{
	return lanner_output(GEN_OP, data, size);
}

/* The enforcing actions of a matched selector: Signal and Override. They run before the hooked function
 * does: at the entry, also for a hook with `return: true` whose selector needs no return value
 * (gen_enter; the event is posted at the return). A selector that filters on the return value decides
 * only at the return, when Override can no longer apply: it is not stored then (a stored value would
 * be returned by the thread's next call of a function with an fmod_ret program instead). */
static __always_inline void gen_enforce(struct gen_hook *hook, struct gen_scratch *s, struct gen_selector *sel)
{
	if (sel->flags & GSF_SIGNAL) {
		if (hook->flags & GHF_ENFORCE) {
			bpf_send_signal(sel->signal);
			s->ev.flags |= GEF_SIGNALED;
			gen_stat(s->ev.hook_id, GST_SIGNAL);
		} else {
			gen_stat(s->ev.hook_id, GST_MONITOR_SIGNAL);
		}
	}
	if ((sel->flags & GSF_OVERRIDE) && !(s->ev.flags & GEF_RETURN)) {
		if (hook->flags & GHF_ENFORCE) {
			if (hook->flags & GHF_LSM) {
				s->override_set = 1;
				s->override_ret = sel->override_ret;
			} else {
				__u64 key = bpf_get_current_pid_tgid();
				__s64 rc = sel->override_ret;

				bpf_map_update_elem(&gen_override, &key, &rc, BPF_ANY);
			}
			s->ev.flags |= GEF_OVERRIDDEN;
			gen_stat(s->ev.hook_id, GST_OVERRIDE);
		} else {
			gen_stat(s->ev.hook_id, GST_MONITOR_OVERRIDE);
		}
	}
}

/* apply the matched selector's actions and post the event */
/* TrackSock: the sock -> the event's process, recorded as this policy's */
static __always_inline void gen_track_sock(struct gen_hook *hook, struct gen_scratch *s, __u64 sk)
{
	struct gen_socktrack_val v = { .key = s->ev.key, .policy = hook->policy };

	bpf_map_update_elem(&gen_socktrack, &sk, &v, BPF_ANY);
}

/* Post kernelStackTrace / userStackTrace: the stacks of the event being posted, by id in gen_stacks (the same
 * stack gets the same id; user space deletes an id once read). ctx: the program's context (any program type
 * that has bpf_get_stackid: tracepoint, raw_tp/tp_btf, kprobe, fentry/fexit, LSM, uprobe). Taken when the event
 * is posted: at the return for a return: true hook. */
static __always_inline void gen_take_stacks(void *ctx, struct gen_scratch *s, __u32 flags)
{
	if (flags & GSF_KSTACK) {
		s->ev.kstack = bpf_get_stackid(ctx, &gen_stacks, 0);
		s->ev.flags |= GEF_KSTACK;
	}
	if (flags & GSF_USTACK) {
		s->ev.ustack = bpf_get_stackid(ctx, &gen_stacks, BPF_F_USER_STACK);
		s->ev.flags |= GEF_USTACK;
	}
}

static __always_inline int gen_finish(struct gen_hook *hook, struct gen_scratch *s, void *ctx)
{
	__u32 si = s->ev.selector;
	struct gen_selector *sel;

	gen_stat(s->ev.hook_id, GST_MATCHED);
	if (si >= GEN_MAX_SELECTORS) { /* no selectors: Post */
		s->ev.action = 0;
		goto post;
	}
	si = GEN_BOUND(si, GEN_MAX_SELECTORS);
	sel = &hook->sel[si];
	s->ev.action = sel->action;
	if (!(s->ev.flags & GEF_ENFORCED))
		gen_enforce(hook, s, sel);
	if (sel->flags & (GSF_TRACKSOCK | GSF_UNTRACKSOCK)) {
		__u64 sk = sel->sock_arg < GEN_MAX_ARGS ? s->ev.aux[GEN_BOUND(sel->sock_arg, GEN_MAX_ARGS)] : 0;

		if (sk && (sel->flags & GSF_TRACKSOCK))
			gen_track_sock(hook, s, sk);
		else if (sk)
			bpf_map_delete_elem(&gen_socktrack, &sk);
	}
	if (!(sel->flags & GSF_POST)) {
		gen_stat(s->ev.hook_id, GST_NOPOST);
		return 0;
	}
	if (sel->rate_limit_ns && gen_rate_limited(s, sel)) {
		gen_stat(s->ev.hook_id, GST_RATE_LIMITED);
		return 0;
	}
	if (sel->flags & (GSF_KSTACK | GSF_USTACK))
		gen_take_stacks(ctx, s, sel->flags);
post:
	s->ev.hdr.ktime = bpf_ktime_get_ns();
	if (gen_output(&s->ev, sizeof(s->ev)) == 0)
		gen_stat(s->ev.hook_id, GST_POST);
	else
		gen_stat(s->ev.hook_id, GST_POST_LOST);
	return 0;
}

/* ------------------------------------------------------------------------------------ entry points */
static __always_inline struct gen_scratch *gen_begin(__u32 hook_id)
{
	__u32 zero = 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct gen_scratch *s = bpf_map_lookup_elem(&gen_heap, &zero);

	if (!s)
		return NULL;
	s->rev_done = 0;
	s->override_set = 0;
	s->ev.hdr.op = GEN_OP;
	s->ev.hdr.cpu = bpf_get_smp_processor_id();
	s->ev.hook_id = hook_id;
	s->ev.tid = (__u32)pid_tgid;
	s->ev.flags = 0;
	s->ev.trunc = 0;
	s->ev.ret = 0;
	s->ev.selector = GEN_MAX_SELECTORS;
	s->key_done = 0; /* the process key and binary are read when needed (gen_fill_key, gen_load_binary) */
	return s;
}

/* the event's process key, once a selector matched (a tracked sock's owner, set while reading args, stays) */
static __always_inline void gen_fill_key(struct gen_scratch *s)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct execve_entry *e;

	if (s->key_done)
		return;
	s->key_done = 1;
	e = bpf_map_lookup_elem(&execve_map, &tgid);
	if (e) {
		s->ev.key = e->key;
	} else {
		s->ev.key.pid = tgid;
		s->ev.key.pad = 0;
		s->ev.key.ktime = 0;
		s->ev.flags |= GEF_NOPROC;
	}
}

static __always_inline __u64 gen_inflight_key(__u32 hook_id)
{
	return (bpf_get_current_pid_tgid() << 32) | hook_id;
}

/* a workload-scoped hook runs for the selected pods only (the task's netns is one of theirs) and, for a
 * containerSelector, for the selected containers (the task's cgroup is one of theirs) */
static __always_inline bool gen_in_scope(struct gen_hook *hook)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct gen_scope_key k = { .scope = hook->policy };
	struct gen_scope_cg_key c = { .scope = hook->policy };

	k.netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum); /* 0 for an exiting task: in no scope */
	if (bpf_map_lookup_elem(&gen_scope, &k))
		return true;
	if (!(hook->flags & GHF_SCOPED_CG))
		return false;
	c.cgroup = bpf_get_current_cgroup_id();
	return bpf_map_lookup_elem(&gen_scope_cg, &c) != NULL;
}

static __always_inline int gen_enter(__u64 ctx, __u32 hook_id, struct gen_hook *hook)
{
	struct gen_scratch *s = gen_begin(hook_id);
	struct gen_read_ctx rc = {};
	struct gen_sel_ctx c = {};
	__u64 key;

	if (!s)
		return 0;
	if ((hook->flags & GHF_SCOPED) && !gen_in_scope(hook)) /* after gen_begin: no stale LSM override */
		return 0;
	rc.ctx = ctx;
	rc.hook = hook;
	rc.s = s;
	s->ev.nargs = hook->nargs;
	bpf_loop(GEN_MAX_ARGS, gen_read_arg, &rc, 0);
	if (hook->nselectors) {
		c.hook = hook;
		c.s = s;
		c.match = -1;
		bpf_loop(GEN_MAX_SELECTORS, gen_selector_step, &c, 0);
		if (c.match < 0)
			return 0;
		s->ev.selector = c.match;
	}
	gen_fill_key(s);
	if (hook->flags & GHF_HAS_RET) {
		__u32 si = s->ev.selector;

		if (si < GEN_MAX_SELECTORS && !(hook->sel[GEN_BOUND(si, GEN_MAX_SELECTORS)].flags & GSF_HAS_RET)) {
			gen_enforce(hook, s, &hook->sel[GEN_BOUND(si, GEN_MAX_SELECTORS)]); /* before the function runs */
			s->ev.flags |= GEF_ENFORCED;
		}
		key = gen_inflight_key(hook_id);
		bpf_map_update_elem(&gen_inflight, &key, &s->ev, BPF_ANY);
		return 0;
	}
	return gen_finish(hook, s, (void *)ctx);
}

/* ctx: the program's context (Post stack traces) */
static __always_inline int gen_exit(__s64 ret, struct gen_hook *exit_hook, void *ctx)
{
	__u32 zero = 0, entry_id = exit_hook->pair;
	__u64 key = gen_inflight_key(entry_id);
	struct gen_event *saved = bpf_map_lookup_elem(&gen_inflight, &key);
	struct gen_scratch *s;
	struct gen_hook *hook;
	struct gen_sel_ctx c = {};
	__u32 si;

	if (!saved)
		return 0;
	s = bpf_map_lookup_elem(&gen_heap, &zero);
	hook = bpf_map_lookup_elem(&gen_hooks, &entry_id);
	if (!s || !hook) {
		bpf_map_delete_elem(&gen_inflight, &key);
		return 0;
	}
	bpf_probe_read_kernel(&s->ev, sizeof(s->ev), saved);
	bpf_map_delete_elem(&gen_inflight, &key);
	s->rev_done = 0;
	s->ev.ret = ret;
	s->ev.flags |= GEF_RETURN;
	if ((hook->flags & GHF_RET_SOCK) && ret && hook->ret_slot < GEN_MAX_ARGS) {
		/* the returned sock is new (sk_alloc, openreq child): an entry for its address is a freed sock's,
		 * so the event keeps the returning process */
		struct proc_key caller = s->ev.key;
		__u32 flags = s->ev.flags;

		gen_read_sock(s, hook->ret_slot, (struct sock *)ret);
		s->ev.key = caller;
		s->ev.flags = flags;
	}
	si = s->ev.selector;
	if (si < GEN_MAX_SELECTORS && (hook->sel[GEN_BOUND(si, GEN_MAX_SELECTORS)].flags & GSF_HAS_RET)) {
		si = GEN_BOUND(si, GEN_MAX_SELECTORS);
		c.hook = hook;
		c.s = s;
		c.sel = &hook->sel[si];
		c.phase_ret = 1;
		c.ok = 1;
		bpf_loop(GEN_MAX_FILTERS, gen_filter_step, &c, 0);
		if (!c.ok)
			return 0;
	}
	if ((hook->flags & (GHF_RET_TRACKSOCK | GHF_RET_UNTRACKSOCK)) && ret) { /* returnArgAction */
		__u64 sk = (__u64)ret;

		if (hook->flags & GHF_RET_TRACKSOCK)
			gen_track_sock(hook, s, sk);
		else
			bpf_map_delete_elem(&gen_socktrack, &sk);
	}
	return gen_finish(hook, s, ctx);
}
