/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Egress policy (the mesh's outboundTrafficPolicy): under REGISTRY_ONLY a workload may
 * connect (or send a datagram) only to destinations the registry knows — the backends of
 * the mesh's services, its workloads, the addresses of resolution NONE services — and to
 * loopback. Decided at connect()/sendmsg(), before a packet exists: the refused socket
 * gets EPERM, nothing leaves the node. Frontends (VIPs) never get here: they are
 * translated first. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "capture.h"

/* key 0 → enum weft_egress_mode. An array, not a load-time setting: the mode is config. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} weft_egress_mode_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WEFT_MAX_EGRESS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weft_egress_key);
	__type(value, __u32);
} weft_egress_v1 SEC(".maps");

/* 127.0.0.0/8, ::1, and the unspecified address (which connects to this host). */
static __always_inline int weft_is_local_dst(const struct weft_l4addr *dst)
{
	__u32 w[4];

	__builtin_memcpy(w, dst->addr, 16);
	if (dst->family == WEFT_FAMILY_V4)
		return dst->addr[0] == 127 || w[0] == 0;
	return w[0] == 0 && w[1] == 0 && w[2] == 0 && (w[3] == 0 || w[3] == bpf_htonl(1));
}

/* Whether a connection to `dst` (not a frontend) must be refused. */
static __always_inline int weft_egress_refused(struct bpf_sock_addr *ctx, const struct weft_l4addr *dst)
{
	struct weft_egress_key k = {};
	__u32 zero = 0;
	__u32 *mode = bpf_map_lookup_elem(&weft_egress_mode_v1, &zero);

	if (!mode || *mode != WEFT_EGRESS_REGISTRY_ONLY)
		return 0;
	if (weft_is_local_dst(dst) || weft_is_agent(ctx))
		return 0;
	k.prefixlen = 32 + 128;
	k.port = dst->port;
	k.family = dst->family;
	__builtin_memcpy(k.addr, dst->addr, 16);
	if (bpf_map_lookup_elem(&weft_egress_v1, &k))
		return 0;
	k.port = 0;
	return !bpf_map_lookup_elem(&weft_egress_v1, &k);
}
