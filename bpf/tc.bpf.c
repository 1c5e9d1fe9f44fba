/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* TC ingress on the node's interfaces: plaintext TCP connection attempts to this node's
 * workloads, judged by inbound policy (lib/inbound.h) before the stack spends anything
 * on them. STRICT drops; a port with policy or L7 telemetry is steered into the agent's
 * inbound listener with bpf_sk_assign (the accepted socket keeps the workload's address
 * as its local address, so the agent knows exactly which port was dialed). Everything
 * else continues to the next filter untouched. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "inbound.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* key 0 → the agent's IPv4 inbound listener, 1 → its IPv6 one. Only the agent puts
 * sockets here, from its own descriptors, and the kernel takes a socket out when it
 * closes: steering can reach no one else's listener, not even one that took the port
 * while the agent was away. Not pinned: each loaded program has its own, filled by the
 * agent that loaded it. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} weft_inlisten_v1 SEC(".maps");

/* Hands the SYN to the agent's listener on the inbound port. Established packets need
 * nothing: the accepted socket is in the kernel's connection table under the packet's
 * real 4-tuple. */
static __always_inline int weft_steer(struct __sk_buff *skb, const struct weft_pkt *p)
{
	__u32 key = p->family == WEFT_FAMILY_V4 ? 0 : 1;
	struct bpf_sock *sk;
	long err;

	if (!weft_settings.inbound_port)
		return -1;
	sk = bpf_map_lookup_elem(&weft_inlisten_v1, &key);
	if (!sk)
		return -1;
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return -1;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? -1 : 0;
}

static __always_inline int weft_tc_judge(struct __sk_buff *skb, __u32 l3_off)
{
	struct weft_pkt p = {};
	struct weft_inpol_val *v;
	int r = weft_parse(skb, l3_off, &p);

	if (r == WEFT_PKT_OTHER)
		return TC_ACT_UNSPEC;
	if (r == WEFT_PKT_OPAQUE) {
		if (!weft_inpol_lookup(&p, 0))
			return TC_ACT_UNSPEC;
		weft_in_count(&p, WEFT_IN_STRICT_NETWORK, 0);
		return TC_ACT_SHOT;
	}
	if (!weft_is_connect(&p) || weft_is_agent_port(p.dport))
		return TC_ACT_UNSPEC;
	v = weft_inpol_lookup(&p, 1);
	if (!v || v->action == WEFT_INPOL_PASS)
		return TC_ACT_UNSPEC;
	if (v->action == WEFT_INPOL_DROP) {
		weft_in_count(&p, WEFT_IN_STRICT_NETWORK, 0);
		return TC_ACT_SHOT;
	}
	if (weft_steer(skb, &p)) {
		/* Policy that the agent is not there to apply is not skipped: refuse. */
		weft_in_count(&p, WEFT_IN_NO_LISTENER, 0);
		return TC_ACT_SHOT;
	}
	weft_in_count(&p, WEFT_IN_STEERED, 0);
	return TC_ACT_OK;
}

/* Ethernet (and veth) interfaces: the IP header follows the 14-byte MAC header. */
SEC("tc")
int weft_tc_eth(struct __sk_buff *skb) { return weft_tc_judge(skb, ETH_HLEN); }

/* Layer-3 interfaces (tun, wireguard, ipip): the packet starts with its IP header. */
SEC("tc")
int weft_tc_l3(struct __sk_buff *skb) { return weft_tc_judge(skb, 0); }
