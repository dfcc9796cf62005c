/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * netdp datapath: the one definition of every map key and value and of the flow record.
 * The Python side (netdp/datapath.py, netdp/flows.py) derives its codecs from the object's BTF.
 */
#pragma once

#define NETDP_OP_FLOW 1 /* flow_event.op; also the lanner_lost slot */

/* directions, as seen from the endpoint (policy_key.direction, flow_event.direction) */
#define NETDP_DIR_INGRESS 0 /* into the pod: TC egress of the host-side veth */
#define NETDP_DIR_EGRESS 1  /* out of the pod: TC ingress of the host-side veth */

/* endpoint_info.flags */
#define NETDP_EP_INGRESS_ENFORCED (1 << 0) /* some policy selects the endpoint for ingress */
#define NETDP_EP_EGRESS_ENFORCED (1 << 1)
#define NETDP_EP_HOST_ROUTING (1 << 2)  /* both MACs known: from_pod may hand packets for it straight to its pod */

/* flow_event.verdict (Hubble's numbering) */
#define NETDP_VERDICT_FORWARDED 1
#define NETDP_VERDICT_DROPPED 2

/* flow_event.reason */
#define NETDP_REASON_NO_POLICY 1     /* new flow, direction not enforced: default allow */
#define NETDP_REASON_POLICY_ALLOW 2  /* new flow allowed by a policy entry */
#define NETDP_REASON_POLICY_DENY 3   /* no policy entry allows it */
#define NETDP_REASON_SPOOFED 4       /* from a pod's veth with a source address that is not the pod's */

/* flow_stats slots (per CPU) */
#define NETDP_STAT_RATE_LIMITED 0 /* flow events not sent: over the rate limit */
#define NETDP_STAT_EMITTED 1      /* flow events handed to the ring buffer */
#define NETDP_STAT_NEW_FLOWS 2    /* new conntrack entries */
#define NETDP_STAT_DROPS 3        /* packets dropped by policy */
#define NETDP_STAT_REPLIES 4      /* packets passed as replies */
#define NETDP_STAT_REDIRECTS 5    /* packets from_pod handed straight to a local pod (BPF host routing) */
#define NETDP_STAT_SLOTS 8

/* conntrack lifetimes */
#define NETDP_CT_LIFETIME_TCP_NS (6ULL * 3600 * 1000000000ULL)
#define NETDP_CT_LIFETIME_OTHER_NS (60ULL * 1000000000ULL)
#define NETDP_CT_LIFETIME_CLOSING_NS (10ULL * 1000000000ULL) /* TCP after a FIN or RST */

/* ct_entry.flags */
#define NETDP_CT_CLOSING (1 << 0)
#define NETDP_CT_HOST_ROUTED (1 << 1) /* an ingress entry made by host routing: the flow is pod to pod, as
					* addressed (no NAT on the node between), so its replies may be host-routed too */

/* endpoints: key = pod IPv4 (network order, __u32) */
struct endpoint_info {
	__u32 ifindex;      /* host side of the veth */
	__u32 identity;     /* the pod's security identity */
	__u16 endpoint_id;  /* node-local endpoint id, keys the policy map */
	__u16 flags;        /* NETDP_EP_* */
	__u32 port_plens;   /* bit n: the endpoint has policy entries for port blocks of prefix length n */
	__u8 mac[6];        /* the pod side of the veth (BPF host routing writes it as the destination) */
	__u8 host_mac[6];   /* the host side (the pod's gateway: the source of what it receives) */
};

/* ipcache: longest-prefix match over IPv4 -> identity (miss = world) */
struct ipcache_key {
	__u32 prefixlen; /* LPM trie: bits that follow */
	__u32 addr;      /* network order */
};

struct ipcache_value {
	__u32 identity;
	__u32 flags;
};

/*
 * Policy: one hash per node keyed by endpoint. identity 0 = any peer, proto 0 = any protocol.
 * Ports are aligned blocks: dport_plen high bits of dport are significant (16 = one port, 0 = every
 * port, with dport 0), so an endPort range is a handful of entries. A packet is allowed when an entry
 * exists for its identity or 0, its protocol (or 0 with every port), and a block holding its port;
 * only the prefix lengths the endpoint uses (endpoint_info.port_plens) are looked up.
 */
#define NETDP_PORT_PLEN_MAX 16

struct policy_key {
	__u32 identity;    /* remote identity */
	__u16 endpoint_id;
	__u16 dport;       /* host order, first port of the block */
	__u8 proto;
	__u8 direction;    /* NETDP_DIR_* */
	__u8 dport_plen;   /* 0..16 */
	__u8 pad;
};

struct policy_value {
	__u32 cookie; /* which policy installed it: a number the agent maps to "namespace/name" (never 0) */
	__u32 pad;
};

/* conntrack: 5-tuple as the packet carries it, plus the direction the flow was opened in */
struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;   /* host order; ICMP: an echo reply's identifier, else 0 */
	__u16 dport;   /* ICMP: an echo request's identifier, else 0 */
	__u8 proto;
	__u8 direction; /* NETDP_DIR_* of the endpoint that created it */
	__u16 pad;
};

struct ct_entry {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u32 packets;     /* forward direction only */
	__u32 ifindex;     /* host-side veth of the endpoint the entry belongs to (from_pod's source check) */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 flags;       /* NETDP_CT_* */
	__u32 policy_rev;  /* netdp_config.policy_rev when this direction's policy last allowed the flow */
};

/*
 * netdp_config[0]: node-wide datapath state the agent writes. policy_rev changes after every change
 * that can alter a verdict (policy entries, enforcement flags, ipcache); an established flow whose
 * ct_entry.policy_rev equals it skips the ipcache and policy lookups.
 */
struct netdp_config {
	__u32 policy_rev;
	__u32 pad;
};

/* IP fragments: the ports of a fragmented datagram, recorded from its first fragment */
struct frag_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;      /* IP identification */
	__u8 proto;
	__u8 pad;
};

struct frag_ports {
	__u16 sport;
	__u16 dport;
	__u8 echo_request; /* an ICMP echo request's: it never passes as a reply */
	__u8 pad;
};

/* flow rate limit: one token bucket for the node */
struct flow_bucket {
	struct bpf_spin_lock lock;
	__u32 tokens;
	__u64 last_ns;
};

/* the record the ring buffer carries */
struct flow_event {
	__u8 op;         /* NETDP_OP_FLOW */
	__u8 verdict;    /* NETDP_VERDICT_* */
	__u8 reason;     /* NETDP_REASON_* */
	__u8 direction;  /* NETDP_DIR_* relative to endpoint_id */
	__u32 ifindex;
	__u64 ktime;
	__u32 saddr;     /* network order */
	__u32 daddr;
	__u16 sport;     /* host order */
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u16 endpoint_id;     /* the endpoint whose program saw it */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 len;             /* skb length */
	__u32 policy_cookie;   /* policy_value.cookie of the entry that allowed it; 0 otherwise */
	__u32 pad;
};
