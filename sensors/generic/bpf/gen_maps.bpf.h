/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Stage 0 of the generic policy datapath: its maps and per-CPU scratch. Every generic object
 * (generic_*.bpf.c) includes this; the engine creates the maps once (generic_tp.bpf.o) and every other
 * object shares them by fd. Configuration comes only through these maps (gen_hooks keyed by hook id).
 */
#pragma once

#include <lanner/common.bpf.h>
#include <bpf/bpf_endian.h>
#include "../../bpf/execve_map.bpf.h"
#include <lanner/path.bpf.h>
#include "generic.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* the sets' and hooks' map sizes: what all policies together may use (the compiler refuses a policy past them) */
enum gen_map_size {
	GEN_MAX_HOOKS = 1024,          /* gen_hooks */
	GEN_SCOPE_ENTRIES = 65536,     /* gen_scope, gen_scope_cg */
	GEN_INT_SET_ENTRIES = 262144,  /* gen_int_set */
	GEN_STR_SET_ENTRIES = 32768,   /* gen_str_set, gen_str_set32/64/128, gen_str_lpm each */
};

/* the short-string sets' key sizes (gen_str_set32/64/128 below) */
enum gen_str_key {
	GEN_STR_KEY32 = 32,
	GEN_STR_KEY64 = 64,
	GEN_STR_KEY128 = 128,
	GEN_STR_HDR = 6, /* prefixlen, set_hi, set_lo */
};

/* The constants Python shares with these programs, by enum (generic.h, and gen_str_key above):
 * clang emits a type into the object's BTF only when something emitted refers to it, so this struct names
 * every shared enum and gen_abi_btf, a function no program calls (libbpf loads none of its instructions),
 * refers to the struct. lanner.sensors.generic.abi reads the enumerators by name from the BTF. */
struct gen_abi {
	enum gen_op op;
	enum gen_limits limits;
	enum gen_arg_type arg_type;
	enum gen_arg_flags arg_flags;
	enum gen_filter_kind filter_kind;
	enum gen_filter_flags filter_flags;
	enum gen_operator operator;
	enum gen_pid_flags pid_flags;
	enum gen_selector_flags selector_flags;
	enum gen_stat stat;
	enum gen_hook_flags hook_flags;
	enum gen_sys sys;
	enum gen_ns_type ns_type;
	enum gen_arg_loc arg_loc;
	enum gen_event_flags event_flags;
	enum gen_stacks stacks;
	enum gen_str_key str_key;
	enum gen_map_size map_size;
	enum gen_cap_type cap_type;
};

__attribute__((used)) static int gen_abi_btf(struct gen_abi *abi)
{
	return 0;
}

/* A function the verifier checks once, on its own, whatever its callers' states (a BPF global function):
 * arguments are scalars or pointers to sized memory (checked for NULL inside), the result a scalar.
 * This is how the engine keeps each program far below the verifier's budget on every kernel. */
#define GEN_STAGE __attribute__((noinline))

/* v clamped to [0, n) in the register the verifier sees (clang may otherwise check a copy) */
#define GEN_BOUND(v, n) ({ __u64 __v = (v); asm volatile("if %0 < %1 goto +1; %0 = 0;" : "+r"(__v) : "i"(n)); __v; })

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GEN_MAX_HOOKS);
	__type(key, __u32);
	__type(value, struct gen_hook);
} gen_hooks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GEN_SCOPE_ENTRIES);
	__type(key, struct gen_scope_key);
	__type(value, __u8);
} gen_scope SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GEN_SCOPE_ENTRIES);
	__type(key, struct gen_scope_cg_key);
	__type(value, __u8);
} gen_scope_cg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GEN_INT_SET_ENTRIES);
	__type(key, struct gen_int_key);
	__type(value, __u8);
} gen_int_set SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GEN_STR_SET_ENTRIES);
	__type(key, struct gen_str);
	__type(value, __u8);
} gen_str_set SEC(".maps");

/* the same sets for short strings, keyed by the first GEN_STR_KEY32/64/128 bytes of struct gen_str: a string
 * of len bytes lives in the smallest map whose key holds it zero padded (gen_str_bucket), so a lookup
 * hashes 32, 64 or 128 bytes instead of the whole 260-byte key (jhash over the key is most of its cost) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GEN_STR_SET_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, GEN_STR_KEY32);
	__uint(value_size, 1);
} gen_str_set32 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GEN_STR_SET_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, GEN_STR_KEY64);
	__uint(value_size, 1);
} gen_str_set64 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GEN_STR_SET_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, GEN_STR_KEY128);
	__uint(value_size, 1);
} gen_str_set128 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, GEN_STR_SET_ENTRIES);
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
	__u64 ctx;                        /* the program's context (a tracepoint record, pt_regs, the BTF argument
					   * array): its address, for the stages to read arguments from */
	/* What the syscall dispatcher's hooks share within one of its invocations (every hook of a syscall reads
	 * the same arguments of the same process): sysinv counts the invocations on this CPU; a binary or an
	 * argument slot read in invocation n carries n + 1 (0: nothing cached) and serves the later hooks */
	__u64 sysinv;
	__u64 bin_inv;                    /* s->bin holds the binary of invocation bin_inv - 1 */
	__u64 arg_inv[GEN_MAX_ARGS];      /* slot i holds the argument arg_desc[i] of invocation arg_inv[i] - 1 */
	__u64 arg_desc[GEN_MAX_ARGS];     /* the first 8 bytes of the struct gen_arg it was read for */
	__u16 arg_flags[GEN_MAX_ARGS];    /* and its flags (GAF_ZERO) */
	__u32 arg_trunc;                  /* bit i: the cached slot i was truncated */
	__u32 rev_shared;                 /* bit i: rev[i] is slot i reversed, made in invocation rev_inv - 1 */
	__u64 rev_inv;
	__u32 share;                      /* this hook may use and fill the caches above (a dispatcher hook) */
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

/* this CPU's scratch. A stage looks it up itself rather than taking it as an argument: a stage's pointer
 * arguments are plain memory to the verifier, which kernels before 6.3 refuse as a map helper's key or
 * value, while a map lookup gives a map value they accept (the lookup is a few instructions) */
static __always_inline struct gen_scratch *gen_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&gen_heap, &zero);
}

static __always_inline void gen_stat(__u32 hook_id, __u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&gen_stats, &hook_id);

	if (v && slot < GST_SLOTS)
		v[slot] += 1; /* per-CPU value: no other writer on this CPU while the program runs */
}
