// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * netdp datapath: TC programs on the host side of each pod's veth.
 *
 *   from_pod  clsact ingress  packets leaving the pod  -> source check, egress policy of the endpoint
 *   to_pod    clsact egress   packets entering the pod -> ingress policy of the endpoint
 *
 * Per packet: endpoint lookup (pod IP), conntrack (replies and established flows), ipcache LPM
 * (remote IP -> identity, miss = world), then at most six policy hash lookups (exact, port wildcard,
 * protocol wildcard, each for the identity and for any identity): O(1) whatever the rule count.
 * New flows and drops emit a flow_event through the ring buffer, under a node-wide rate limit.
 */
#define LANNER_RINGBUF_BYTES (1024 * 1024)
#include <lanner/common.bpf.h>
#include <bpf/bpf_endian.h>
#include "datapath.h"

char LICENSE[] SEC("license") = "GPL";

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_SCTP 132

/* keep the record types in BTF for the Python decoders */
const struct flow_event *_anchor_flow __attribute__((unused));

const volatile __u32 flow_rate_limit = 0; /* flow events per second for the node; 0 = unlimited */
const volatile __u32 flow_rate_burst = 0; /* bucket size; 0 = the rate */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct endpoint_info);
} netdp_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
} netdp_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
} netdp_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} netdp_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_bucket);
} netdp_flow_bucket SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
} netdp_frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NETDP_STAT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} netdp_stats SEC(".maps");

struct tuple {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
};

static __always_inline void stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&netdp_stats, &slot);

	if (v)
		*v += 1;
}

/* 0: IPv4 parsed; -1: not IPv4 (ARP, IPv6...), let it pass */
static __always_inline int parse(struct __sk_buff *skb, struct tuple *t)
{
	struct iphdr ip;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
		return -1;
	if (ip.version != 4)
		return -1;
	t->saddr = ip.saddr;
	t->daddr = ip.daddr;
	t->proto = ip.protocol;
	t->sport = 0;
	t->dport = 0;
	t->tcp_flags = 0;
	__u16 frag = bpf_ntohs(ip.frag_off);
	int has_ports = ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP || ip.protocol == IPPROTO_SCTP;
	struct frag_key fk = {.saddr = ip.saddr, .daddr = ip.daddr, .id = ip.id, .proto = ip.protocol};

	if (frag & 0x1fff) { /* a later fragment has no L4 header: the first one left its ports */
		struct frag_ports *fp = has_ports ? bpf_map_lookup_elem(&netdp_frags, &fk) : NULL;

		if (fp) {
			t->sport = fp->sport;
			t->dport = fp->dport;
		}
		return 0;
	}
	__u32 l4 = ETH_HLEN + ip.ihl * 4;
	if (has_ports) {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) == 0) {
			t->sport = bpf_ntohs(ports[0]);
			t->dport = bpf_ntohs(ports[1]);
		}
		if (ip.protocol == IPPROTO_TCP)
			bpf_skb_load_bytes(skb, l4 + 13, &t->tcp_flags, 1);
		if (frag & 0x2000) { /* more fragments follow */
			struct frag_ports fp = {.sport = t->sport, .dport = t->dport};

			bpf_map_update_elem(&netdp_frags, &fk, &fp, BPF_ANY);
		}
	}
	return 0;
}

static __always_inline __u32 ipcache_identity(__u32 addr)
{
	struct ipcache_key k = {.prefixlen = 32, .addr = addr};
	struct ipcache_value *v = bpf_map_lookup_elem(&netdp_ipcache, &k);

	return v ? v->identity : 2; /* IDENTITY_WORLD */
}

/* the cookie of a matching entry, 0 when none */
static __always_inline __u32 policy_get(__u16 ep, __u32 identity, __u8 dir, __u8 proto, __u16 dport, __u8 plen)
{
	struct policy_key k = {.identity = identity, .endpoint_id = ep, .dport = dport, .proto = proto,
			       .direction = dir, .dport_plen = plen};
	struct policy_value *v = bpf_map_lookup_elem(&netdp_policy, &k);

	return v ? (v->cookie ? v->cookie : 0xffffffff) : 0;
}

/* for one identity: the port blocks holding dport, longest first, then any protocol */
static __always_inline __u32 policy_for(struct endpoint_info *ep, __u32 identity, __u8 dir, __u8 proto,
					__u16 dport)
{
	__u32 plens = ep->port_plens;
	__u32 c;

	for (int plen = NETDP_PORT_PLEN_MAX; plen >= 0; plen--) {
		if (!(plens & (1U << plen)))
			continue;
		__u16 mask = plen ? (__u16)(0xffff << (NETDP_PORT_PLEN_MAX - plen)) : 0;
		c = policy_get(ep->endpoint_id, identity, dir, proto, dport & mask, plen);
		if (c)
			return c;
	}
	return (plens & 1) ? policy_get(ep->endpoint_id, identity, dir, 0, 0, 0) : 0;
}

static __always_inline __u32 policy_allows(struct endpoint_info *ep, __u32 identity, __u8 dir, __u8 proto,
					   __u16 dport)
{
	__u32 c = policy_for(ep, identity, dir, proto, dport);

	return c ? c : policy_for(ep, 0, dir, proto, dport);
}

static __always_inline int flow_rate_ok(__u64 now)
{
	__u32 rate = flow_rate_limit;
	__u32 burst = flow_rate_burst ? flow_rate_burst : flow_rate_limit;
	__u32 key = 0;
	struct flow_bucket *b;
	int ok;

	if (!rate)
		return 1;
	b = bpf_map_lookup_elem(&netdp_flow_bucket, &key);
	if (!b)
		return 1;
	bpf_spin_lock(&b->lock);
	__u64 elapsed = now - b->last_ns;
	__u64 add = elapsed >= 1000000000ULL ? burst : elapsed * rate / 1000000000ULL;
	if (add) {
		__u64 tokens = b->tokens + add;
		b->tokens = tokens > burst ? burst : tokens;
		b->last_ns = now;
	}
	ok = b->tokens > 0;
	if (ok)
		b->tokens -= 1;
	bpf_spin_unlock(&b->lock);
	return ok;
}

static __always_inline void emit(struct __sk_buff *skb, struct tuple *t, struct endpoint_info *ep, __u8 dir,
				 __u32 remote_id, __u8 verdict, __u8 reason, __u32 cookie, __u64 now)
{
	struct flow_event ev = {};

	if (!flow_rate_ok(now)) {
		stat_inc(NETDP_STAT_RATE_LIMITED);
		return;
	}
	ev.op = NETDP_OP_FLOW;
	ev.verdict = verdict;
	ev.reason = reason;
	ev.direction = dir;
	ev.ifindex = skb->ifindex;
	ev.ktime = now;
	ev.saddr = t->saddr;
	ev.daddr = t->daddr;
	ev.sport = t->sport;
	ev.dport = t->dport;
	ev.proto = t->proto;
	ev.tcp_flags = t->tcp_flags;
	ev.endpoint_id = ep->endpoint_id;
	ev.src_identity = dir == NETDP_DIR_EGRESS ? ep->identity : remote_id;
	ev.dst_identity = dir == NETDP_DIR_EGRESS ? remote_id : ep->identity;
	ev.len = skb->len;
	ev.policy_cookie = cookie;
	if (lanner_output(NETDP_OP_FLOW, &ev, sizeof(ev)) == 0)
		stat_inc(NETDP_STAT_EMITTED);
}

static __always_inline int ct_alive(struct ct_entry *e, __u8 proto, __u64 now)
{
	__u64 life = proto != IPPROTO_TCP ? NETDP_CT_LIFETIME_OTHER_NS :
		     (e->flags & NETDP_CT_CLOSING) ? NETDP_CT_LIFETIME_CLOSING_NS : NETDP_CT_LIFETIME_TCP_NS;

	return now - e->last_seen_ns < life;
}

/* a FIN or RST in either direction: the entry only has to outlive the closing handshake */
static __always_inline void ct_touch(struct ct_entry *e, struct tuple *t, __u64 now)
{
	e->last_seen_ns = now;
	if (t->tcp_flags & 0x05) /* FIN | RST */
		e->flags |= NETDP_CT_CLOSING;
}

static __always_inline int handle(struct __sk_buff *skb, struct tuple *t, struct endpoint_info *ep, __u8 dir)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct_key rk = {.saddr = t->daddr, .daddr = t->saddr, .sport = t->dport, .dport = t->sport,
			    .proto = t->proto, .direction = dir ^ 1};
	struct ct_key fk = {.saddr = t->saddr, .daddr = t->daddr, .sport = t->sport, .dport = t->dport,
			    .proto = t->proto, .direction = dir};
	struct ct_entry *e;

	/* a reply to a flow the other direction opened (and its policy allowed) */
	e = bpf_map_lookup_elem(&netdp_ct, &rk);
	if (e && ct_alive(e, t->proto, now)) {
		ct_touch(e, t, now);
		stat_inc(NETDP_STAT_REPLIES);
		return TC_ACT_OK;
	}

	__u32 remote_id = ipcache_identity(dir == NETDP_DIR_EGRESS ? t->daddr : t->saddr);
	__u16 enforced = ep->flags & (dir == NETDP_DIR_EGRESS ? NETDP_EP_EGRESS_ENFORCED : NETDP_EP_INGRESS_ENFORCED);

	/* established flows are checked too (picks up policy changes), new ones also create state */
	__u32 cookie = 0;
	if (enforced) {
		cookie = policy_allows(ep, remote_id, dir, t->proto, t->dport);
		if (!cookie) {
			stat_inc(NETDP_STAT_DROPS);
			emit(skb, t, ep, dir, remote_id, NETDP_VERDICT_DROPPED, NETDP_REASON_POLICY_DENY, 0, now);
			return TC_ACT_SHOT;
		}
	}
	e = bpf_map_lookup_elem(&netdp_ct, &fk);
	if (e && ct_alive(e, t->proto, now)) {
		ct_touch(e, t, now);
		e->packets += 1;
		return TC_ACT_OK;
	}
	struct ct_entry ne = {
		.created_ns = now,
		.last_seen_ns = now,
		.packets = 1,
		.src_identity = dir == NETDP_DIR_EGRESS ? ep->identity : remote_id,
		.dst_identity = dir == NETDP_DIR_EGRESS ? remote_id : ep->identity,
	};
	bpf_map_update_elem(&netdp_ct, &fk, &ne, BPF_ANY);
	stat_inc(NETDP_STAT_NEW_FLOWS);
	emit(skb, t, ep, dir, remote_id, NETDP_VERDICT_FORWARDED,
	     enforced ? NETDP_REASON_POLICY_ALLOW : NETDP_REASON_NO_POLICY, cookie, now);
	return TC_ACT_OK;
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	struct tuple t;
	struct endpoint_info *ep;

	if (parse(skb, &t))
		return TC_ACT_OK;
	ep = bpf_map_lookup_elem(&netdp_endpoints, &t.saddr);
	if (!ep || ep->ifindex != skb->ifindex) {
		/* only the pod's own address may leave its veth: a forged source would dodge its egress
		 * policy, or borrow another pod's identity */
		struct endpoint_info none = {.ifindex = skb->ifindex};

		stat_inc(NETDP_STAT_DROPS);
		emit(skb, &t, &none, NETDP_DIR_EGRESS, ipcache_identity(t.daddr), NETDP_VERDICT_DROPPED,
		     NETDP_REASON_SPOOFED, 0, bpf_ktime_get_ns());
		return TC_ACT_SHOT;
	}
	return handle(skb, &t, ep, NETDP_DIR_EGRESS);
}

SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	struct tuple t;
	struct endpoint_info *ep;

	if (parse(skb, &t))
		return TC_ACT_OK;
	ep = bpf_map_lookup_elem(&netdp_endpoints, &t.daddr);
	if (!ep)
		return TC_ACT_OK;
	return handle(skb, &t, ep, NETDP_DIR_INGRESS);
}
