/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Stage 2 of the generic policy datapath: filters (matchArgs, matchReturnArgs). gen_filter compares one
 * argument (or the return value) of the event under construction with one filter: integer sets and
 * ranges, masks, string sets (hash maps by length class), prefixes and postfixes (LPM tries), CIDRs.
 * Verified on its own (GEN_STAGE), once per program.
 */
#pragma once

#include "gen_maps.bpf.h"

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

/* dst = the first len bytes of src, reversed (Postfix matches a prefix of the reversed string) */
GEN_STAGE int gen_reverse(struct gen_str *dst, struct gen_str *src, __u32 len)
{
	struct gen_rev_ctx r = {};

	if (!dst || !src)
		return 0;
	r.src = src->s;
	r.dst = dst->s;
	r.len = len;
	__builtin_memset(dst, 0, sizeof(*dst));
	bpf_loop(GEN_STR_MAX, gen_rev_step, &r, 0);
	return 0;
}

/* rev[a] already holds slot a reversed: made by an earlier hook of this dispatcher invocation from the string
 * slot a still holds (a new read of the slot clears the bit: gen_arg_read) */
static __always_inline bool gen_rev_cached(struct gen_scratch *s, __u32 a)
{
	return s->share && s->rev_inv == s->sysinv + 1 && (s->rev_shared & (1U << a));
}

/* rev[a] now holds slot a reversed: for the later hooks of this invocation (or nobody, outside the dispatcher) */
static __always_inline void gen_rev_made(struct gen_scratch *s, __u32 a)
{
	if (!s->share) {
		s->rev_shared &= ~(1U << a);
		return;
	}
	if (s->rev_inv != s->sysinv + 1) {
		s->rev_inv = s->sysinv + 1;
		s->rev_shared = 0;
	}
	s->rev_shared |= 1U << a;
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

/* ------------------------------------------------------------------------------------------ filters */
#define GEN_FILTER_MISS 0
#define GEN_FILTER_HIT 1
#define GEN_FILTER_SKIP 2 /* a filter of the other phase (entry / return) */

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

/* filter f on the event in s: GEN_FILTER_HIT, _MISS, or _SKIP when f belongs to the other phase
 * (phase_ret: 1 while evaluating matchReturnArgs at the return) */
GEN_STAGE int gen_filter(struct gen_filter *f, __u32 phase_ret)
{
	struct gen_scratch *s = gen_scratch();
	__u32 a, len;
	bool hit = false, trunc;

	if (!s || !f)
		return GEN_FILTER_MISS;
	if (!!(f->flags & GFF_RET) != !!phase_ret)
		return GEN_FILTER_SKIP;
	a = f->arg;
	if (a == GEN_RET_ARG) {
		hit = gen_int_match(f, (__u64)s->ev.ret);
		goto done;
	}
	if (a >= GEN_MAX_ARGS)
		return GEN_FILTER_SKIP;
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
			if (!gen_rev_cached(s, a)) {
				gen_reverse(&s->rev[a], &s->ev.str[a], len);
				gen_rev_made(s, a);
			}
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
	return hit ? GEN_FILTER_HIT : GEN_FILTER_MISS;
}
