/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Stage 1 of the generic policy datapath: argument readers, by type. gen_read_arg reads one argument of
 * a hook (its raw value from the tracepoint record, pt_regs, the BTF context array or the dispatcher's
 * syscall arguments) into the event's slot i: an integer in vals[i], a string or a kernel object's info
 * struct in str[i] (lens[i] bytes). Each reader of a kernel type is one case; paths are resolved once in
 * gen_read_path. Both are verified on their own (GEN_STAGE), once per program.
 */
#pragma once

#include "gen_maps.bpf.h"

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
GEN_STAGE int gen_read_path(__u32 i, __u64 path, __u64 dentry)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct gen_scratch *s = gen_scratch();
	struct path root, p = {};
	__u32 status = 0, pos, len;

	if (!s || i >= GEN_MAX_ARGS)
		return 0;
	i = GEN_BOUND(i, GEN_MAX_ARGS); /* a stage's argument: bound in the register the verifier checks */
	root = BPF_CORE_READ(task, fs, root);
	if (path) {
		bpf_probe_read_kernel(&p, sizeof(p), (void *)path);
	} else {
		p.dentry = (struct dentry *)dentry; /* no mount: the walk stops at its filesystem's root */
		p.mnt = NULL;
	}
	if (!p.dentry)
		return 0;
	pos = lanner_resolve_path(&p, &root, &s->pb, &status);
	if (pos >= LANNER_PATH_MAX)
		return 0;
	len = LANNER_PATH_MAX - pos;
	if (len > GEN_STR_MAX - 1) {
		len = GEN_STR_MAX - 1;
		s->ev.trunc |= 1 << i;
	}
	bpf_probe_read_kernel(s->ev.str[i].s, len & 255, &s->pb.buf[pos & (LANNER_PATH_MAX - 1)]);
	s->ev.lens[i] = len;
	return 0;
}

static __always_inline void gen_read_fd(struct gen_scratch *s, __u32 i, __u64 fd)
{
	struct file *f = gen_fd_file(fd);

	if (f)
		gen_read_path(i, (__u64)&f->f_path, 0);
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

/* the first 8 bytes of a struct gen_arg (off, size, type, is_signed, size_arg, loc, reg): what it reads */
static __always_inline __u64 gen_arg_desc(struct gen_arg *a)
{
	__u64 d = 0;

	__builtin_memcpy(&d, a, sizeof(d));
	return d;
}

/* slot i already holds argument a, read by an earlier hook of this dispatcher invocation: keep it */
static __always_inline bool gen_arg_cached(struct gen_scratch *s, struct gen_arg *a, __u32 i)
{
	if (!s->share || i >= GEN_MAX_ARGS || a->type == GA_UBUF || a->type == GA_IOVEC) /* sizes: another arg */
		return false;
	if (s->arg_inv[i] != s->sysinv + 1 || s->arg_desc[i] != gen_arg_desc(a) || s->arg_flags[i] != a->flags)
		return false;
	s->ev.trunc |= s->arg_trunc & (1U << i);
	return true;
}

/* slot i now holds argument a: later hooks of this invocation may keep it (or nobody, outside the dispatcher) */
static __always_inline void gen_arg_read(struct gen_scratch *s, struct gen_arg *a, __u32 i)
{
	if (i >= GEN_MAX_ARGS)
		return;
	s->arg_inv[i] = s->share ? s->sysinv + 1 : 0;
	s->arg_desc[i] = gen_arg_desc(a);
	s->arg_flags[i] = a->flags;
	s->arg_trunc = (s->arg_trunc & ~(1U << i)) | (s->ev.trunc & (1U << i));
	s->rev_shared &= ~(1U << i); /* a new string in slot i: its reversal is to be made again */
}

/* argument i of hook into the event's slot i; ctx: the tracepoint record or pt_regs address (a scalar: it
 * is only read with bpf_probe_read_kernel) */
GEN_STAGE int gen_read_arg(struct gen_hook *hook, __u64 ctx, __u32 i)
{
	struct gen_scratch *s = gen_scratch();
	struct gen_arg *a;
	__u64 v, p;
	long n;

	if (!s || !hook || i >= GEN_MAX_ARGS || i >= hook->nargs)
		return 0;
	i = GEN_BOUND(i, GEN_MAX_ARGS);
	a = &hook->args[i];
	if (gen_arg_cached(s, a, i))
		return 0;
	v = gen_raw(ctx, s, hook, a);
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
		gen_read_path(i, (__u64)&f->f_path, 0);
		break;
	}
	case GA_PATH: {
		struct path *pa = (struct path *)v;

		if (!pa)
			break;
		s->ev.vals[i] = BPF_CORE_READ(pa, dentry, d_inode, i_mode);
		gen_read_path(i, (__u64)pa, 0);
		break;
	}
	case GA_DENTRY:
		if (v)
			gen_read_path(i, 0, v);
		break;
	case GA_BINPRM: {
		struct file *f = BPF_CORE_READ((struct linux_binprm *)v, file);

		if (f) {
			s->ev.vals[i] = BPF_CORE_READ(f, f_inode, i_mode);
			gen_read_path(i, (__u64)&f->f_path, 0);
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
		p = ctx + (v & 0xffff);
		n = bpf_probe_read_kernel_str(s->ev.str[i].s, GEN_STR_MAX, (void *)p);
		gen_set_strlen(s, i, n);
		break;
	case GA_INLINE_STR:
		n = bpf_probe_read_kernel_str(s->ev.str[i].s, a->size < GEN_STR_MAX ? a->size : GEN_STR_MAX,
					      (void *)(ctx + a->off));
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
				size = gen_extend(gen_raw(ctx, s, hook, &hook->args[si]), hook->args[si].size,
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
	gen_arg_read(s, a, i);
	return 0;
}

