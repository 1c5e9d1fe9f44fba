/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* cgroup socket hooks: connect/sendmsg rewrite a VIP to a backend (or, for L7 services,
 * to the agent's proxy), getpeername/recvmsg show the VIP again, so applications never
 * see the translation; sockops re-keys captured connections for the agent. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "capture.h"
#include "inbound.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Reading the sock_addr context field by field keeps every access a verifier-approved
 * 4-byte load (user_ip6 and the sk addresses may not be read as one 16-byte copy). */
static __always_inline void weft_ctx_dst4(struct bpf_sock_addr *ctx, struct weft_l4addr *a)
{
	__u32 ip = ctx->user_ip4;

	__builtin_memcpy(a->addr, &ip, 4);
	a->port = (__be16)ctx->user_port;
	a->family = WEFT_FAMILY_V4;
}

static __always_inline void weft_ctx_dst6(struct bpf_sock_addr *ctx, struct weft_l4addr *a)
{
	__u32 ip[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };

	__builtin_memcpy(a->addr, ip, 16);
	a->port = (__be16)ctx->user_port;
	a->family = WEFT_FAMILY_V6;
}

/* ::ffff:a.b.c.d — how a dual-stack (AF_INET6) socket names an IPv4 peer; gRPC and
 * Java clients dial IPv4 VIPs this way. Network byte order, so word 2 is 0x0000ffff. */
static __always_inline int weft_is_v4mapped(const __u32 ip[4])
{
	return ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0x0000ffff);
}

/* A connect6/sendmsg6 destination as the maps key it: a v4-mapped address is its IPv4
 * address (the VIP was configured as IPv4). Returns whether it was mapped. */
static __always_inline int weft_ctx_dst6_unmapped(struct bpf_sock_addr *ctx, struct weft_l4addr *a)
{
	__u32 ip[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };

	if (!weft_is_v4mapped(ip)) {
		weft_ctx_dst6(ctx, a);
		return 0;
	}
	__builtin_memset(a->addr, 0, 16);
	__builtin_memcpy(a->addr, &ip[3], 4);
	a->port = (__be16)ctx->user_port;
	a->family = WEFT_FAMILY_V4;
	return 1;
}

/* Writes an IPv4 address into a v6 context as ::ffff:a.b.c.d. */
static __always_inline void weft_ctx_set6_mapped(struct bpf_sock_addr *ctx, const __u8 addr[16], __be16 port)
{
	__u32 ip;

	__builtin_memcpy(&ip, addr, 4);
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
	ctx->user_ip6[3] = ip;
	ctx->user_port = port;
}

static __always_inline void weft_ctx_set4(struct bpf_sock_addr *ctx, const __u8 addr[16], __be16 port)
{
	__u32 ip;

	__builtin_memcpy(&ip, addr, 4);
	ctx->user_ip4 = ip;
	ctx->user_port = port;
}

static __always_inline void weft_ctx_set6(struct bpf_sock_addr *ctx, const __u8 addr[16], __be16 port)
{
	__u32 ip[4];

	__builtin_memcpy(ip, addr, 16);
	ctx->user_ip6[0] = ip[0];
	ctx->user_ip6[1] = ip[1];
	ctx->user_ip6[2] = ip[2];
	ctx->user_ip6[3] = ip[3];
	ctx->user_port = port;
}

static __always_inline void weft_sk_src4(struct bpf_sock_addr *ctx, __u8 src[16])
{
	struct bpf_sock *sk = ctx->sk;
	__u32 ip = sk ? sk->src_ip4 : 0;

	__builtin_memcpy(src, &ip, 4);
}

static __always_inline void weft_sk_src6(struct bpf_sock_addr *ctx, __u8 src[16])
{
	struct bpf_sock *sk = ctx->sk;
	__u32 ip[4] = {};

	if (sk) {
		ip[0] = sk->src_ip6[0];
		ip[1] = sk->src_ip6[1];
		ip[2] = sk->src_ip6[2];
		ip[3] = sk->src_ip6[3];
	}
	__builtin_memcpy(src, ip, 16);
}

/* Writes the new destination back as the socket names it: v4, v6, or v4-mapped v6. */
static __always_inline void weft_ctx_set_dst(struct bpf_sock_addr *ctx, const struct weft_l4addr *dst, int v6, int mapped)
{
	if (mapped)
		weft_ctx_set6_mapped(ctx, dst->addr, dst->port);
	else if (v6)
		weft_ctx_set6(ctx, dst->addr, dst->port);
	else
		weft_ctx_set4(ctx, dst->addr, dst->port);
}

/* Only same-family backends can be written into a sock_addr context. */
static __always_inline int weft_forward(struct bpf_sock_addr *ctx, int v6, int is_sendmsg)
{
	struct weft_l4addr dst = {};
	__u8 src[16] = {};
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 sticky_hash = 0;
	enum weft_xlate r;
	int may_capture = !is_sendmsg && weft_capture_enabled();
	int mapped = 0;

	if (v6) {
		mapped = weft_ctx_dst6_unmapped(ctx, &dst);
		weft_sk_src6(ctx, src);
	} else {
		weft_ctx_dst4(ctx, &dst);
		weft_sk_src4(ctx, src);
	}
	/* An unconnected UDP socket sends each datagram separately; hashing its cookie keeps
	 * one socket's datagrams (and so its replies) on one backend. */
	if (is_sendmsg)
		sticky_hash = weft_mix32((__u32)cookie ^ (__u32)(cookie >> 32));

	if (may_capture && weft_is_agent(ctx)) {
		may_capture = 0;
		weft_count(WEFT_STAT_AGENT_BYPASS);
	}
	r = weft_xlate_fwd(cookie, ctx->protocol, &dst, src, sticky_hash, is_sendmsg, may_capture);
	if (r == WEFT_XLATE_NONE)
		return 1;
	if (r == WEFT_XLATE_CAPTURE) {
		struct weft_l4addr vip = dst;

		/* If the origin cannot be recorded the agent could not route the connection:
		 * refuse rather than hand it a connection it cannot place. */
		if (weft_capture(cookie, &vip, &dst, v6 && !mapped)) {
			bpf_set_retval(-WEFT_ECONNREFUSED);
			return 0;
		}
		weft_ctx_set_dst(ctx, &dst, v6, mapped);
		weft_count(WEFT_STAT_CONNECT_CAPTURE);
		return 1;
	}
	if (r == WEFT_XLATE_NO_BACKEND || dst.family != (v6 && !mapped ? WEFT_FAMILY_V6 : WEFT_FAMILY_V4)) {
		/* A VIP with no active backend refuses like kube-proxy's REJECT rule, instead
		 * of letting the packet wander off towards an address nobody owns. */
		weft_count(is_sendmsg ? WEFT_STAT_SENDMSG_NO_BACKEND : WEFT_STAT_CONNECT_NO_BACKEND);
		bpf_set_retval(-WEFT_ECONNREFUSED);
		return 0;
	}
	weft_ctx_set_dst(ctx, &dst, v6, mapped);
	weft_count(is_sendmsg ? WEFT_STAT_SENDMSG_XLATE : WEFT_STAT_CONNECT_XLATE);
	return 1;
}

static __always_inline int weft_reverse(struct bpf_sock_addr *ctx, int v6, __u32 stat)
{
	struct weft_l4addr peer = {};
	struct weft_revnat_val *vip;
	int mapped = 0;

	if (v6)
		mapped = weft_ctx_dst6_unmapped(ctx, &peer);
	else
		weft_ctx_dst4(ctx, &peer);
	vip = weft_revnat_lookup(bpf_get_socket_cookie(ctx), &peer);
	if (!vip)
		return 1;
	if (mapped)
		weft_ctx_set6_mapped(ctx, vip->addr, vip->port);
	else if (v6)
		weft_ctx_set6(ctx, vip->addr, vip->port);
	else
		weft_ctx_set4(ctx, vip->addr, vip->port);
	weft_count(stat);
	return 1;
}

SEC("cgroup/connect4")
int weft_connect4(struct bpf_sock_addr *ctx) { return weft_forward(ctx, 0, 0); }

SEC("cgroup/connect6")
int weft_connect6(struct bpf_sock_addr *ctx) { return weft_forward(ctx, 1, 0); }

SEC("cgroup/sendmsg4")
int weft_sendmsg4(struct bpf_sock_addr *ctx) { return weft_forward(ctx, 0, 1); }

SEC("cgroup/sendmsg6")
int weft_sendmsg6(struct bpf_sock_addr *ctx) { return weft_forward(ctx, 1, 1); }

SEC("cgroup/recvmsg4")
int weft_recvmsg4(struct bpf_sock_addr *ctx) { return weft_reverse(ctx, 0, WEFT_STAT_RECVMSG_REVNAT); }

SEC("cgroup/recvmsg6")
int weft_recvmsg6(struct bpf_sock_addr *ctx) { return weft_reverse(ctx, 1, WEFT_STAT_RECVMSG_REVNAT); }

SEC("cgroup/getpeername4")
int weft_peername4(struct bpf_sock_addr *ctx) { return weft_reverse(ctx, 0, WEFT_STAT_PEERNAME_REVNAT); }

SEC("cgroup/getpeername6")
int weft_peername6(struct bpf_sock_addr *ctx) { return weft_reverse(ctx, 1, WEFT_STAT_PEERNAME_REVNAT); }

/* Only TCP_CONNECT_CB matters (it needs no callback flags): the capture re-key. */
SEC("sockops")
int weft_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op == BPF_SOCK_OPS_TCP_CONNECT_CB)
		weft_capture_rekey(skops);
	return 1;
}

/* The last word on plaintext connections to a workload, at the workload's own listening
 * socket: whatever path the SYN took (loopback from this node, an interface without the
 * TC program), a STRICT port accepts only the agent (its sockets carry agent_mark; the
 * mark survives loopback, and crossing a network namespace clears it, so the network
 * cannot forge it). A port under AuthorizationPolicy that was not steered to the agent
 * is refused rather than let past the policy. */
SEC("cgroup_skb/ingress")
int weft_in_guard(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct weft_inpol_val *v;
	struct weft_pkt p = {};
	int r;

	if (!sk || sk->state != BPF_TCP_LISTEN)
		return 1; /* established traffic: the common case, decided in two loads */
	if (weft_settings.agent_mark && skb->mark == weft_settings.agent_mark)
		return 1;
	r = weft_parse(skb, 0, &p);
	if (r == WEFT_PKT_OTHER)
		return 1;
	if (r == WEFT_PKT_OPAQUE) {
		if (!weft_inpol_lookup(&p, 0))
			return 1;
		weft_in_count(&p, WEFT_IN_STRICT_LOCAL);
		return 0;
	}
	if (!weft_is_connect(&p) || weft_is_agent_port(p.dport))
		return 1;
	v = weft_inpol_lookup(&p, 1);
	if (!v || v->action == WEFT_INPOL_PASS)
		return 1;
	if (v->action == WEFT_INPOL_DROP) {
		weft_in_count(&p, WEFT_IN_STRICT_LOCAL);
		return 0;
	}
	if (v->flags & WEFT_INPOL_F_AUTHZ) {
		weft_in_count(&p, WEFT_IN_UNSTEERABLE);
		return 0;
	}
	return 1; /* steered for telemetry only: losing that is no reason to refuse */
}
