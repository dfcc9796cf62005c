// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * netdp datapath: TC programs on the host side of each pod's veth.
 *
 *   from_pod  clsact ingress  packets leaving the pod  -> source check, egress policy of the endpoint
 *   to_pod    clsact egress   packets entering the pod -> ingress policy of the endpoint
 *
 * Per packet: headers read in place (direct packet access), then conntrack first. A reply to an allowed
 * flow, or an established flow whose policy revision (netdp_config) is still current, passes on that
 * hit: coarse clock, one or two LRU hash lookups, no endpoint/ipcache/policy lookup, no precise clock,
 * no shared counter. In from_pod a hit counts only on the veth the entry was made for (ct_entry.ifindex),
 * which stands in for the source check. Anything else (a new flow, an established one after a policy or
 * ipcache change, a packet the entry does not vouch for) takes the slow path: endpoint lookup (pod IP)
 * and source check, ipcache LPM (remote IP -> identity, miss = world), then a few policy hash lookups
 * (port blocks, protocol wildcard, each for the identity and for any identity): O(1) whatever the rule
 * count. New flows and drops emit a flow_event through the ring buffer, under a node-wide rate limit;
 * the precise clock, the rate limiter and the ring buffer are only touched for an event.
 *
 * With host routing on (the host_routing constant), from_pod also serves the destination when it is a
 * local pod: see host_route().
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
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

/* keep the record types in BTF for the Python decoders */
const struct flow_event *_anchor_flow __attribute__((unused));

const volatile __u32 flow_rate_limit = 0; /* flow events per second for the node; 0 = unlimited */
const volatile __u32 flow_rate_burst = 0; /* bucket size; 0 = the rate */
const volatile __u32 host_routing = 0;    /* 1: from_pod hands packets for a local pod straight to it */

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
	__uint(type, BPF_MAP_TYPE_ARRAY); /* lookups are inlined by the verifier: a load, no call */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct netdp_config);
} netdp_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NETDP_STAT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} netdp_stats SEC(".maps");

/* ICMP echo (as Cilium keys it): a request carries its identifier as dport, a reply as sport, so a reply's
 * reversed tuple is the request's; echo_request: the packet never passes as a reply (ct_pass) */
struct tuple {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 echo_request;
};

static __always_inline void stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&netdp_stats, &slot);

	if (v)
		*v += 1;
}

/* the tuple's ports from the first 6 bytes of the L4 header: TCP/UDP/SCTP ports; for an ICMP echo
 * request or reply, its identifier (other ICMP messages: ports 0) */
static __always_inline void l4_ports(struct tuple *t, const __u8 *h)
{
	if (t->proto != IPPROTO_ICMP) {
		t->sport = ((__u16)h[0] << 8) | h[1];
		t->dport = ((__u16)h[2] << 8) | h[3];
		return;
	}
	__u16 id = ((__u16)h[4] << 8) | h[5];

	if (h[0] == ICMP_ECHO) {
		t->dport = id;
		t->echo_request = 1;
	} else if (h[0] == ICMP_ECHOREPLY) {
		t->sport = id;
	}
}

/* 0: IPv4 parsed; -1: not IPv4 (ARP, IPv6...), let it pass. Headers are read in place when the
 * linear area holds them (always, for veth traffic), else copied with bpf_skb_load_bytes. */
static __always_inline int parse(struct __sk_buff *skb, struct tuple *t)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr ipbuf, *ip = data + ETH_HLEN;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if ((void *)(ip + 1) > end) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ipbuf, sizeof(ipbuf)))
			return -1;
		ip = &ipbuf;
	}
	if (ip->version != 4)
		return -1;
	__u8 proto = ip->protocol;
	__u16 frag = bpf_ntohs(ip->frag_off);
	__u32 ihl = ip->ihl;

	t->saddr = ip->saddr;
	t->daddr = ip->daddr;
	t->proto = proto;
	t->sport = 0;
	t->dport = 0;
	t->tcp_flags = 0;
	t->echo_request = 0;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP && proto != IPPROTO_ICMP)
		return 0;
	if (frag & 0x3fff) /* a fragment: its ports go through netdp_frags */
		goto fragment;
	__u32 l4 = ETH_HLEN + ihl * 4;
	__u8 *p = data + l4;

	if (p + 6 <= (__u8 *)end) { /* every L4 header here is 8 bytes or more */
		l4_ports(t, p);
		if (proto != IPPROTO_TCP)
			return 0;
		if (p + 14 <= (__u8 *)end)
			t->tcp_flags = p[13];
		else
			bpf_skb_load_bytes(skb, l4 + 13, &t->tcp_flags, 1);
		return 0;
	}
	__u8 h[6];

	if (bpf_skb_load_bytes(skb, l4, h, sizeof(h)) == 0)
		l4_ports(t, h);
	if (proto == IPPROTO_TCP)
		bpf_skb_load_bytes(skb, l4 + 13, &t->tcp_flags, 1);
	return 0;

fragment:;
	struct frag_key fk = {.saddr = t->saddr, .daddr = t->daddr, .id = ip->id, .proto = proto};

	if (frag & 0x1fff) { /* a later fragment has no L4 header: the first one left its ports */
		struct frag_ports *fp = bpf_map_lookup_elem(&netdp_frags, &fk);

		if (fp) {
			t->sport = fp->sport;
			t->dport = fp->dport;
			t->echo_request = fp->echo_request;
		}
		return 0;
	}
	/* the first fragment (more fragments follow: it holds 8 bytes of L4 header or more) */
	__u8 fh[6];
	struct frag_ports fpv = {};

	if (bpf_skb_load_bytes(skb, ETH_HLEN + ihl * 4, fh, sizeof(fh)) == 0) {
		l4_ports(t, fh);
		fpv.sport = t->sport;
		fpv.dport = t->dport;
		fpv.echo_request = t->echo_request;
	}
	if (proto == IPPROTO_TCP)
		bpf_skb_load_bytes(skb, ETH_HLEN + ihl * 4 + 13, &t->tcp_flags, 1);
	bpf_map_update_elem(&netdp_frags, &fk, &fpv, BPF_ANY);
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
static __always_inline __u32 policy_for(__u16 ep_id, __u32 plens, __u32 identity, __u8 dir, __u8 proto,
					__u16 dport)
{
	__u32 c;

	for (int plen = NETDP_PORT_PLEN_MAX; plen >= 0; plen--) {
		if (!(plens & (1U << plen)))
			continue;
		__u16 mask = plen ? (__u16)(0xffff << (NETDP_PORT_PLEN_MAX - plen)) : 0;
		c = policy_get(ep_id, identity, dir, proto, dport & mask, plen);
		if (c)
			return c;
	}
	return (plens & 1) ? policy_get(ep_id, identity, dir, 0, 0, 0) : 0;
}

/* The policy lookups, a global function: the verifier checks it once, not once for every path that
 * reaches the slow path (their loop over port blocks is most of the programs' verification cost).
 * Scalars only; dir_proto_port: direction << 24 | protocol << 16 | destination port. */
__attribute__((noinline)) __u32 netdp_policy_allows(__u32 identity, __u32 ep_id, __u32 plens, __u32 dir_proto_port)
{
	__u8 dir = dir_proto_port >> 24, proto = dir_proto_port >> 16;
	__u16 dport = proto != IPPROTO_ICMP ? dir_proto_port : 0; /* an echo identifier is no port */
	__u32 c = policy_for(ep_id, plens, identity, dir, proto, dport);

	return c ? c : policy_for(ep_id, plens, 0, dir, proto, dport);
}

static __always_inline __u32 policy_allows(struct endpoint_info *ep, __u32 identity, __u8 dir, __u8 proto,
					   __u16 dport)
{
	return netdp_policy_allows(identity, ep->endpoint_id, ep->port_plens,
				   ((__u32)dir << 24) | ((__u32)proto << 16) | dport);
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
				 __u32 remote_id, __u8 verdict, __u8 reason, __u32 cookie)
{
	__u64 now = bpf_ktime_get_ns(); /* only for an event: the fast path reads the coarse clock */
	struct flow_event ev = {};

	if (!flow_rate_ok(now)) {
		stat_inc(NETDP_STAT_RATE_LIMITED);
		return;
	}
	ev.op = NETDP_OP_FLOW;
	ev.verdict = verdict;
	ev.reason = reason;
	ev.direction = dir;
	ev.ifindex = ep->ifindex; /* the endpoint's veth: with host routing, from_pod decides for the destination too */
	ev.ktime = now;
	ev.saddr = t->saddr;
	ev.daddr = t->daddr;
	ev.sport = t->proto != IPPROTO_ICMP ? t->sport : 0; /* an echo identifier is conntrack's, not a port */
	ev.dport = t->proto != IPPROTO_ICMP ? t->dport : 0;
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

	return (__s64)(now - e->last_seen_ns) < (__s64)life; /* a stamp just ahead of now is alive */
}

/* a FIN or RST in either direction: the entry only has to outlive the closing handshake. The entry is
 * written only when something changed (the coarse clock ticks every jiffy), so the cache line stays
 * shared between the CPUs that read it. */
static __always_inline void ct_touch(struct ct_entry *e, struct tuple *t, __u64 now)
{
	if (e->last_seen_ns != now)
		e->last_seen_ns = now;
	if ((t->tcp_flags & 0x05) && !(e->flags & NETDP_CT_CLOSING)) /* FIN | RST */
		e->flags |= NETDP_CT_CLOSING;
}

static __always_inline __u32 policy_rev(void)
{
	__u32 key = 0;
	struct netdp_config *c = bpf_map_lookup_elem(&netdp_config, &key);

	return c ? c->policy_rev : 0;
}

/* conntrack state of a packet: the forward key, the entry of an established flow that needs its policy
 * checked again (NULL for a new flow), or a reply whose veth has to be checked first; hit: the entry that
 * passed the packet (a reply's is the entry of the direction that opened the flow) */
struct ct_state {
	struct ct_key k;
	struct ct_entry *e;
	struct ct_entry *reply;
	struct ct_entry *hit;
	__u64 now;
	__u32 rev;
};

/* what ct_pass() found */
#define CT_DECIDE 0      /* the slow path decides */
#define CT_REPLY 1       /* a reply to an allowed flow */
#define CT_ESTABLISHED 2 /* an established flow with a current policy revision */

/* The fast path: 1 when conntrack passes the packet (a reply to an allowed flow, or an established flow
 * whose policy revision is current); 0 when the policy has to decide (s says what was found). ifindex:
 * from_pod's veth, which must be the one the entry was made for (an entry is made after the source
 * check, so a hit on the same veth is a packet that passed it); 0 in to_pod. */
static __always_inline int ct_pass(struct tuple *t, __u8 dir, __u32 ifindex, struct ct_state *s)
{
	struct ct_entry *e;

	/* conntrack lifetimes are seconds to hours: the coarse clock (no clocksource read) will do */
	s->now = bpf_ktime_get_coarse_ns();
	s->k.saddr = t->daddr;
	s->k.daddr = t->saddr;
	s->k.sport = t->dport;
	s->k.dport = t->sport;
	s->k.proto = t->proto;
	s->k.direction = dir ^ 1;
	s->k.pad = 0;
	/* a reply to a flow the other direction opened (and its policy allowed); an ICMP echo request
	 * never is one: it opens its own flow, whatever the peer sent before */
	e = t->echo_request ? NULL : bpf_map_lookup_elem(&netdp_ct, &s->k);
	if (e && ct_alive(e, t->proto, s->now)) {
		if (ifindex && e->ifindex != ifindex) {
			s->reply = e; /* the source check decides */
			return 0;
		}
		ct_touch(e, t, s->now);
		stat_inc(NETDP_STAT_REPLIES);
		s->hit = e;
		return CT_REPLY;
	}
	/* read before any policy lookup: a change made meanwhile leaves the entry stale, never wrongly current */
	s->rev = policy_rev();
	s->k.saddr = t->saddr;
	s->k.daddr = t->daddr;
	s->k.sport = t->sport;
	s->k.dport = t->dport;
	s->k.direction = dir;
	e = bpf_map_lookup_elem(&netdp_ct, &s->k);
	if (e && !ct_alive(e, t->proto, s->now))
		e = NULL;
	s->e = e;
	/* established, and nothing changed since the policy allowed it: done */
	if (e && e->policy_rev == s->rev && (!ifindex || e->ifindex == ifindex)) {
		ct_touch(e, t, s->now);
		e->packets += 1;
		s->hit = e;
		return CT_ESTABLISHED;
	}
	return CT_DECIDE;
}

/* The slow path: a new flow, or an established one after a policy or ipcache change (which applies
 * to it at once). */
static __always_inline int decide(struct __sk_buff *skb, struct tuple *t, struct endpoint_info *ep, __u8 dir,
				  struct ct_state *s, __u32 ct_flags)
{
	struct ct_entry *e = s->reply;

	if (e) { /* a reply, on the veth of its endpoint (checked by the caller) */
		ct_touch(e, t, s->now);
		e->ifindex = ep->ifindex;
		stat_inc(NETDP_STAT_REPLIES);
		s->hit = e;
		return TC_ACT_OK;
	}
	e = s->e;
	__u32 remote_id = ipcache_identity(dir == NETDP_DIR_EGRESS ? t->daddr : t->saddr);
	__u16 enforced = ep->flags & (dir == NETDP_DIR_EGRESS ? NETDP_EP_EGRESS_ENFORCED : NETDP_EP_INGRESS_ENFORCED);
	__u32 cookie = 0;

	if (enforced) {
		cookie = policy_allows(ep, remote_id, dir, t->proto, t->dport);
		if (!cookie) {
			stat_inc(NETDP_STAT_DROPS);
			emit(skb, t, ep, dir, remote_id, NETDP_VERDICT_DROPPED, NETDP_REASON_POLICY_DENY, 0);
			return TC_ACT_SHOT;
		}
	}
	if (e) {
		ct_touch(e, t, s->now);
		e->packets += 1;
		e->policy_rev = s->rev;
		e->ifindex = ep->ifindex;
		if ((e->flags & ct_flags) != ct_flags)
			e->flags |= ct_flags;
		return TC_ACT_OK;
	}
	struct ct_entry ne = {
		.created_ns = s->now,
		.last_seen_ns = s->now,
		.packets = 1,
		.ifindex = ep->ifindex,
		.src_identity = dir == NETDP_DIR_EGRESS ? ep->identity : remote_id,
		.dst_identity = dir == NETDP_DIR_EGRESS ? remote_id : ep->identity,
		.flags = ((t->tcp_flags & 0x05) ? NETDP_CT_CLOSING : 0) | ct_flags,
		.policy_rev = s->rev,
	};
	bpf_map_update_elem(&netdp_ct, &s->k, &ne, BPF_ANY);
	stat_inc(NETDP_STAT_NEW_FLOWS);
	emit(skb, t, ep, dir, remote_id, NETDP_VERDICT_FORWARDED,
	     enforced ? NETDP_REASON_POLICY_ALLOW : NETDP_REASON_NO_POLICY, cookie);
	return TC_ACT_OK;
}

/*
 * BPF host routing: a packet from a local pod to another local pod leaves from_pod straight for the
 * destination pod (bpf_redirect_peer: the peer of its host-side veth, in the pod's netns), as a router
 * would forward it (MACs rewritten, TTL decremented), skipping the host's IP stack, the destination
 * veth's queue and to_pod. So from_pod applies the destination's ingress policy here, exactly as to_pod
 * would (conntrack first, then the policy; same entries, same flow events), and marks the destination's
 * ingress entry HOST_ROUTED. A reply is host-routed only when the entry of the flow it answers carries
 * that mark: a flow that reached this pod through the node's stack may have been translated there (a
 * service VIP or hostPort DNAT by kube-proxy or portmap), and its replies must go back through the
 * stack to be translated back. TC_ACT_OK: not host-routed (not for a local pod with known MACs, a reply
 * of a stack-routed flow, or TTL 1: the kernel sends the ICMP error); the stack carries it and to_pod
 * decides as usual.
 */
static __always_inline int host_route(struct __sk_buff *skb, struct tuple *t)
{
	struct endpoint_info *dep = bpf_map_lookup_elem(&netdp_endpoints, &t->daddr);
	struct ct_state s = {};
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	int found;

	if (!dep || !(dep->flags & NETDP_EP_HOST_ROUTING))
		return TC_ACT_OK;
	if ((void *)(ip + 1) > end || ip->ttl <= 1)
		return TC_ACT_OK;
	found = ct_pass(t, NETDP_DIR_INGRESS, 0, &s);
	if (found == CT_DECIDE && decide(skb, t, dep, NETDP_DIR_INGRESS, &s, NETDP_CT_HOST_ROUTED) != TC_ACT_OK)
		return TC_ACT_SHOT;
	if (found == CT_ESTABLISHED && !(s.hit->flags & NETDP_CT_HOST_ROUTED))
		s.hit->flags |= NETDP_CT_HOST_ROUTED; /* made by to_pod before host routing served the flow */
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > end) /* cannot happen (checked above); the verifier wants it after the calls */
		return TC_ACT_OK;
	__builtin_memcpy(data, dep->mac, 6);          /* h_dest */
	__builtin_memcpy(data + 6, dep->host_mac, 6); /* h_source */
	__u32 check = ip->check;                      /* ip_decrease_ttl(): RFC 1624 incremental checksum */
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl -= 1;
	stat_inc(NETDP_STAT_REDIRECTS);
	return bpf_redirect_peer(dep->ifindex, 0);
}

/* after from_pod allowed a packet: host-route it when it opens or continues a flow of this pod, or
 * answers a flow that host routing brought in */
static __always_inline int forward(struct __sk_buff *skb, struct tuple *t, struct ct_state *s, int found)
{
	if (!host_routing)
		return TC_ACT_OK;
	if (found == CT_REPLY && !(s->hit->flags & NETDP_CT_HOST_ROUTED))
		return TC_ACT_OK;
	return host_route(skb, t);
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	struct ct_state s = {};
	struct tuple t;
	struct endpoint_info *ep;
	int found;

	if (parse(skb, &t))
		return TC_ACT_OK;
	/* conntrack first: an entry made for this veth vouches for the source address */
	found = ct_pass(&t, NETDP_DIR_EGRESS, skb->ifindex, &s);
	if (found != CT_DECIDE)
		return forward(skb, &t, &s, found);
	ep = bpf_map_lookup_elem(&netdp_endpoints, &t.saddr);
	if (!ep || ep->ifindex != skb->ifindex) {
		/* only the pod's own address may leave its veth: a forged source would dodge its egress
		 * policy, or borrow another pod's identity */
		struct endpoint_info none = {.ifindex = skb->ifindex};

		stat_inc(NETDP_STAT_DROPS);
		emit(skb, &t, &none, NETDP_DIR_EGRESS, ipcache_identity(t.daddr), NETDP_VERDICT_DROPPED,
		     NETDP_REASON_SPOOFED, 0);
		return TC_ACT_SHOT;
	}
	if (decide(skb, &t, ep, NETDP_DIR_EGRESS, &s, 0) != TC_ACT_OK)
		return TC_ACT_SHOT;
	return forward(skb, &t, &s, s.hit ? CT_REPLY : CT_ESTABLISHED);
}

SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	struct ct_state s = {};
	struct tuple t;
	struct endpoint_info *ep;

	if (parse(skb, &t))
		return TC_ACT_OK;
	/* conntrack first: the endpoint is only needed to decide (a packet for an address that is no
	 * endpoint passes anyway) */
	if (ct_pass(&t, NETDP_DIR_INGRESS, 0, &s) != CT_DECIDE)
		return TC_ACT_OK;
	ep = bpf_map_lookup_elem(&netdp_endpoints, &t.daddr);
	if (!ep)
		return TC_ACT_OK;
	return decide(skb, &t, ep, NETDP_DIR_INGRESS, &s, 0);
}
