/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* DNS redirect: a workload's query to any resolver (UDP or TCP, port 53) goes to the
 * agent's DNS server on loopback, which answers the mesh's names and forwards the rest.
 * The reply reads as coming from the resolver the workload asked (revnat, as for a VIP).
 * Whose query it is (short names depend on the workload's namespace) the agent asks the
 * kernel itself, by the sending socket's cgroup (sock_diag). */
#pragma once
#include <linux/in.h>
#include "capture.h"

/* Whether the agent's DNS server has a socket up, for the query's protocol and family. An
 * agent that is stopped (with --keep-datapath) or restarting leaves workloads' DNS to the
 * resolvers they asked, instead of sending every query to a port nobody reads. */
static __always_inline int weft_dns_server_up(struct bpf_sock_addr *ctx, int v6)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 len;

	if (v6) {
		t.ipv6.daddr[3] = bpf_htonl(1);
		t.ipv6.dport = weft_settings.dns_port;
		len = sizeof(t.ipv6);
	} else {
		t.ipv4.daddr = bpf_htonl(0x7f000001);
		t.ipv4.dport = weft_settings.dns_port;
		len = sizeof(t.ipv4);
	}
	if (ctx->protocol == IPPROTO_TCP)
		sk = bpf_sk_lookup_tcp(ctx, &t, len, BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_udp(ctx, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* Whether `dst` (as the maps key it; `v6`: the socket's family, v4-mapped destinations
 * counted as IPv4) is a DNS query the agent should take. */
static __always_inline int weft_dns_wanted(struct bpf_sock_addr *ctx, const struct weft_l4addr *dst, int v6)
{
	if (!weft_settings.dns_port || dst->port != bpf_htons(53))
		return 0;
	if (ctx->protocol != IPPROTO_UDP && ctx->protocol != IPPROTO_TCP)
		return 0;
	/* The agent's own forwarding to the node's resolvers goes where it was sent. */
	if (weft_is_agent(ctx))
		return 0;
	return weft_dns_server_up(ctx, v6);
}

/* Sends the query to the agent's DNS server; *dst becomes that address. A v4-mapped
 * destination (`mapped`) goes to the IPv4 server, as ::ffff:127.0.0.1. */
static __always_inline void weft_dns_redirect(struct weft_l4addr *dst, int v6, int mapped, __u64 cookie)
{
	struct weft_backend_val server = {};
	struct weft_l4addr to;

	weft_proxy_addr(&to, v6 && !mapped);
	to.port = weft_settings.dns_port;
	__builtin_memcpy(server.addr, to.addr, 16);
	server.port = to.port;
	server.family = to.family;
	weft_revnat_store(cookie, &server, dst);
	*dst = to;
	weft_count(WEFT_STAT_DNS_REDIRECT);
}
