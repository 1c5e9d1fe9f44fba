/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Inbound policy: what a plaintext TCP connection attempt to a workload of this node may
 * do (PeerAuthentication). Shared by the TC ingress program on the node's interfaces,
 * which drops or steers early, and the cgroup_skb guard on the workloads' own sockets,
 * which holds whatever path a packet took (loopback, an interface without TC). Only
 * connection attempts (SYN without ACK) are judged: replies to a workload's own outbound
 * connections and connections that predate a policy are left alone, as Istio does. */
#pragma once
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "settings.h"
#include "events.h"

/* weft_inpol_key → weft_inpol_val: written by the agent from PeerAuthentication and
 * AuthorizationPolicy. Port 0 is the workload's default; it exists whenever any of the
 * workload's ports has an entry, so "no entry at all" means the address is not policed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_INBOUND);
	__type(key, struct weft_inpol_key);
	__type(value, struct weft_inpol_val);
} weft_inpol_v1 SEC(".maps");

/* weft_inctr_key → __u64 per CPU: connection attempts dropped or steered, by workload
 * address and reason. LRU: counters of long-gone workloads make room for new ones. Its
 * size is that of the first five reasons, so a pinned map is still adopted after an
 * upgrade (libbpf reuses a pin only if it matches exactly). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, WEFT_MAX_WORKLOADS * 5);
	__type(key, struct weft_inctr_key);
	__type(value, __u64);
} weft_inctr_v1 SEC(".maps");

#define WEFT_TCP_FIN 0x01
#define WEFT_TCP_SYN 0x02
#define WEFT_TCP_RST 0x04
#define WEFT_TCP_ACK 0x10

/* The parts of a packet inbound policy looks at. */
struct weft_pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 family;
	__u8 tcp_flags;
};

enum weft_parse_result {
	WEFT_PKT_TCP = 0,   /* TCP with its ports and flags in weft_pkt */
	WEFT_PKT_OTHER = 1, /* not TCP, or a fragment after the first: not ours to judge */
	WEFT_PKT_OPAQUE = 2 /* IPv6 with more extension headers than we walk: its transport
			     * is unknown, so a policed address refuses it */
};

/* IPv6 extension headers walked before giving up (real traffic carries one or two). */
#define WEFT_V6_EXT_MAX 6

/* Parses the IP and TCP headers starting `off` bytes into the packet. Loads through
 * bpf_skb_load_bytes so non-linear packets parse the same as linear ones. */
static __always_inline int weft_parse(struct __sk_buff *skb, __u32 off, struct weft_pkt *p)
{
	__u8 tcp[14];

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) || ip.ihl < 5)
			return WEFT_PKT_OTHER;
		/* A later fragment has no TCP header; it cannot be reassembled into anything
		 * without the first one, which is judged. */
		if (ip.protocol != IPPROTO_TCP || (ip.frag_off & bpf_htons(0x1fff)))
			return WEFT_PKT_OTHER;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		p->family = WEFT_FAMILY_V4;
		off += ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u8 next;
		int found = 0;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return WEFT_PKT_OTHER;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		p->family = WEFT_FAMILY_V6;
		next = ip6.nexthdr;
		off += sizeof(ip6);
#pragma unroll
		for (int i = 0; i < WEFT_V6_EXT_MAX; i++) {
			__u8 h[4];

			if (next == IPPROTO_TCP) {
				found = 1;
				break;
			}
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS && next != IPPROTO_FRAGMENT)
				return WEFT_PKT_OTHER;
			if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
				return WEFT_PKT_OTHER;
			if (next == IPPROTO_FRAGMENT) {
				/* Fragment offset (13 bits above 3 flag bits) non-zero: no TCP header. */
				if (((h[2] << 8) | h[3]) & 0xfff8)
					return WEFT_PKT_OTHER;
				off += 8;
			} else {
				off += (h[1] + 1) * 8;
			}
			next = h[0];
		}
		if (!found && next != IPPROTO_TCP)
			return WEFT_PKT_OPAQUE;
	} else {
		return WEFT_PKT_OTHER;
	}
	if (bpf_skb_load_bytes(skb, off, tcp, sizeof(tcp)))
		return WEFT_PKT_OTHER;
	__builtin_memcpy(&p->sport, &tcp[0], 2);
	__builtin_memcpy(&p->dport, &tcp[2], 2);
	p->tcp_flags = tcp[13];
	return WEFT_PKT_TCP;
}

/* A new connection attempt: SYN, and not the SYN-ACK of one of our own connections. */
static __always_inline int weft_is_connect(const struct weft_pkt *p)
{
	return (p->tcp_flags & (WEFT_TCP_SYN | WEFT_TCP_ACK | WEFT_TCP_RST)) == WEFT_TCP_SYN;
}

/* The agent's own listeners on a workload address (the tunnel, the inbound listener)
 * are how policy is met; they are never subject to it. The outbound capture port is the
 * agent's too: no one else may receive what connect() was redirected to. */
static __always_inline int weft_is_agent_port(__be16 port)
{
	return (weft_settings.tunnel_port && port == weft_settings.tunnel_port) ||
	       (weft_settings.inbound_port && port == weft_settings.inbound_port) ||
	       (weft_settings.proxy_port && port == weft_settings.proxy_port);
}

/* Whether a socket is the agent's: created in the agent's cgroup (sockets keep the
 * cgroup of the process that made them, and a workload cannot move into the agent's). */
static __always_inline int weft_sk_is_agent(struct bpf_sock *sk)
{
	return weft_settings.agent_cgroup && bpf_sk_cgroup_id(sk) == weft_settings.agent_cgroup;
}

/* The rule for the packet's destination port, else the workload's default. */
static __always_inline struct weft_inpol_val *weft_inpol_lookup(const struct weft_pkt *p, int port_too)
{
	struct weft_inpol_key k = {};
	struct weft_inpol_val *v;

	__builtin_memcpy(k.addr, p->daddr, 16);
	k.family = p->family;
	if (port_too) {
		k.port = p->dport;
		v = bpf_map_lookup_elem(&weft_inpol_v1, &k);
		if (v)
			return v;
	}
	k.port = 0;
	return bpf_map_lookup_elem(&weft_inpol_v1, &k);
}

/* The monitor's record of an inbound decision; `cgroup` is the listener's (0 at TC). */
static __always_inline void weft_in_event(const struct weft_pkt *p, __u8 reason, __u64 cgroup)
{
	struct weft_event *e = weft_event_start(WEFT_EV_INBOUND);

	if (!e)
		return;
	e->cgroup_id = cgroup;
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->family = p->family;
	e->proto = IPPROTO_TCP;
	e->reason = reason;
	e->verdict = reason == WEFT_IN_STEERED ? WEFT_VERDICT_STEERED : WEFT_VERDICT_DROPPED;
	bpf_ringbuf_submit(e, 0);
}

/* Counts (and, for a monitor, reports) what was done with a connection attempt. */
static __always_inline void weft_in_count(const struct weft_pkt *p, __u8 reason, __u64 cgroup)
{
	struct weft_inctr_key k = {};
	__u64 one = 1, *v;

	weft_in_event(p, reason, cgroup);

	__builtin_memcpy(k.addr, p->daddr, 16);
	k.family = p->family;
	k.reason = reason;
	v = bpf_map_lookup_elem(&weft_inctr_v1, &k);
	if (v) {
		*v += 1; /* this CPU's slot: no atomic needed */
		return;
	}
	/* First of its kind; another CPU may create it at the same moment, then retry. */
	if (bpf_map_update_elem(&weft_inctr_v1, &k, &one, BPF_NOEXIST)) {
		v = bpf_map_lookup_elem(&weft_inctr_v1, &k);
		if (v)
			*v += 1;
	}
}
