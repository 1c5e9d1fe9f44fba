/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Capture: send a connect() to an L7 service to the agent's outbound listener and keep
 * the exact original destination where the agent can find it by the client's address. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include "lb.h"
#include "settings.h"

#define WEFT_AF_INET 2
#define WEFT_AF_INET6 10

/* The agent marks its own sockets (SO_MARK); their connects are load-balanced like any
 * other but never captured, so the proxy cannot loop into itself whatever cgroup it
 * runs in. The mark is only half of it: a workload with CAP_NET_ADMIN can set any mark,
 * so the connecting process must also be in the agent's cgroup, which it cannot join. */
static __always_inline int weft_is_agent(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 mark = weft_settings.agent_mark;

	return mark && sk && sk->mark == mark && bpf_get_current_cgroup_id() == weft_settings.agent_cgroup;
}

static __always_inline int weft_capture_enabled(void)
{
	return weft_settings.proxy_port != 0;
}

/* The listener a captured connect() goes to: loopback of the socket's own family. */
static __always_inline void weft_proxy_addr(struct weft_l4addr *a, int v6)
{
	__builtin_memset(a->addr, 0, 16);
	if (v6) {
		a->addr[15] = 1;
		a->family = WEFT_FAMILY_V6;
	} else {
		a->addr[0] = 127;
		a->addr[3] = 1;
		a->family = WEFT_FAMILY_V4;
	}
	a->port = weft_settings.proxy_port;
}

/* Records socket `cookie`'s original destination `vip`; on success *dst is the proxy.
 * getpeername() keeps answering the VIP through the same revnat entry L4 uses. */
static __always_inline int weft_capture(__u64 cookie, const struct weft_l4addr *vip, struct weft_l4addr *dst, int v6)
{
	struct weft_capture_val val = {};
	struct weft_backend_val proxy = {};
	struct weft_l4addr p;

	__builtin_memcpy(val.addr, vip->addr, 16);
	val.port = vip->port;
	val.family = vip->family;
	val.cgroup_id = bpf_get_current_cgroup_id();
	if (bpf_map_update_elem(&weft_pending_v1, &cookie, &val, BPF_ANY)) {
		weft_count(WEFT_STAT_CAPTURE_FULL);
		return -1;
	}
	weft_proxy_addr(&p, v6);
	__builtin_memcpy(proxy.addr, p.addr, 16);
	proxy.port = p.port;
	proxy.family = p.family;
	weft_revnat_store(cookie, &proxy, vip);
	*dst = p;
	return 0;
}

/* sockops TCP_CONNECT_CB: the client's address and port are final now; move the pending
 * record to the key the agent will see as its accepted socket's peer. */
static __always_inline void weft_capture_rekey(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct weft_capture_val *val = bpf_map_lookup_elem(&weft_pending_v1, &cookie);
	struct weft_capture_key key = {};

	if (!val)
		return;
	if (skops->family == WEFT_AF_INET6) {
		__u32 ip[4] = { skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2], skops->local_ip6[3] };

		if (ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0x0000ffff)) {
			/* A dual-stack socket talking IPv4: the agent's IPv4 listener sees an
			 * IPv4 peer, so that is the key. */
			__builtin_memcpy(key.addr, &ip[3], 4);
			key.family = WEFT_FAMILY_V4;
		} else {
			__builtin_memcpy(key.addr, ip, 16);
			key.family = WEFT_FAMILY_V6;
		}
	} else {
		__u32 ip = skops->local_ip4;

		__builtin_memcpy(key.addr, &ip, 4);
		key.family = WEFT_FAMILY_V4;
	}
	key.port = bpf_htons((__u16)skops->local_port); /* local_port is host order */
	if (bpf_map_update_elem(&weft_capture_v1, &key, val, BPF_ANY))
		weft_count(WEFT_STAT_CAPTURE_FULL);
	else
		weft_count(WEFT_STAT_CAPTURE_REKEYED);
	bpf_map_delete_elem(&weft_pending_v1, &cookie);
}
