/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* cgroup socket hooks: connect/sendmsg rewrite a VIP to a backend (or, for L7 services,
 * to the agent's proxy), getpeername/recvmsg show the VIP again, so applications never
 * see the translation; sockops re-keys captured connections for the agent. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "capture.h"
#include "dns.h"
#include "egress.h"
#include "inbound.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Reading the sock_addr context field by field keeps every access a verifier-approved
 * 4-byte load (user_ip6 and the sk addresses may not be read as one 16-byte copy). */
/* Refuses the connect() being decided with ECONNREFUSED, as kube-proxy's REJECT does,
 * where the kernel lets a connect hook set the errno (6.1); before, the hook's return 0
 * alone gives EPERM. The test is on a load-time constant, so on those kernels the
 * verifier never walks the call it does not know. */
static __always_inline void weft_refuse_econnrefused(void)
{
	if (!weft_settings.no_set_retval)
		bpf_set_retval(-WEFT_ECONNREFUSED);
}

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

/* The monitor's record of a decision on a frontend: `to` is where the socket was sent
 * (NULL when it was refused). */
static __always_inline void weft_fwd_event(int is_sendmsg, __u8 proto, const __u8 src[16], const struct weft_l4addr *vip,
					   const struct weft_l4addr *to, __u32 svc_id, __u8 verdict, __u8 reason)
{
	struct weft_event *e = weft_event_start(is_sendmsg ? WEFT_EV_SENDMSG : WEFT_EV_CONNECT);

	if (!e)
		return;
	e->cgroup_id = bpf_get_current_cgroup_id();
	__builtin_memcpy(e->saddr, src, 16);
	__builtin_memcpy(e->daddr, vip->addr, 16);
	e->dport = vip->port;
	e->family = vip->family;
	if (to) {
		__builtin_memcpy(e->xaddr, to->addr, 16);
		e->xport = to->port;
		e->xfamily = to->family;
	}
	e->proto = proto;
	e->svc_id = svc_id;
	e->verdict = verdict;
	e->reason = reason;
	bpf_ringbuf_submit(e, 0);
}

/* Only same-family backends can be written into a sock_addr context. */
static __always_inline int weft_forward(struct bpf_sock_addr *ctx, int v6, int is_sendmsg)
{
	struct weft_l4addr dst = {}, vip;
	__u8 src[16] = {};
	__u32 svc_id = 0;
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
	vip = dst;
	r = weft_xlate_fwd(cookie, ctx->protocol, &dst, src, sticky_hash, is_sendmsg, may_capture, &svc_id);
	if (r == WEFT_XLATE_NONE) {
		/* Not a frontend: a DNS query goes to the agent. A service of the mesh on port
		 * 53 (a VIP) is balanced as the service it is, above. */
		if (weft_dns_wanted(ctx, &vip, v6 && !mapped)) {
			dst = vip;
			weft_dns_redirect(&dst, v6, mapped, cookie);
			weft_ctx_set_dst(ctx, &dst, v6, mapped);
			weft_fwd_event(is_sendmsg, ctx->protocol, src, &vip, &dst, 0, WEFT_VERDICT_DNS, 0);
			return 1;
		}
		if (weft_egress_refused(ctx, &vip)) {
			weft_count(WEFT_STAT_EGRESS_REFUSED);
			weft_fwd_event(is_sendmsg, ctx->protocol, src, &vip, NULL, 0, WEFT_VERDICT_REFUSED, WEFT_REFUSED_EGRESS);
			return 0; /* EPERM: the kernel's answer when a cgroup hook refuses */
		}
		return 1;
	}
	if (r == WEFT_XLATE_CAPTURE) {
		/* If the origin cannot be recorded the agent could not route the connection:
		 * refuse rather than hand it a connection it cannot place. */
		if (weft_capture(cookie, &vip, &dst, v6 && !mapped)) {
			weft_fwd_event(is_sendmsg, ctx->protocol, src, &vip, NULL, svc_id, WEFT_VERDICT_REFUSED, WEFT_REFUSED_CAPTURE_FULL);
			weft_refuse_econnrefused();
			return 0;
		}
		weft_ctx_set_dst(ctx, &dst, v6, mapped);
		weft_count(WEFT_STAT_CONNECT_CAPTURE);
		weft_fwd_event(is_sendmsg, ctx->protocol, src, &vip, &dst, svc_id, WEFT_VERDICT_CAPTURED, 0);
		return 1;
	}
	if (r == WEFT_XLATE_NO_BACKEND || dst.family != (v6 && !mapped ? WEFT_FAMILY_V6 : WEFT_FAMILY_V4)) {
		/* A VIP with no active backend refuses like kube-proxy's REJECT rule, instead
		 * of letting the packet wander off towards an address nobody owns. */
		weft_count(is_sendmsg ? WEFT_STAT_SENDMSG_NO_BACKEND : WEFT_STAT_CONNECT_NO_BACKEND);
		if (r == WEFT_XLATE_NO_BACKEND)
			weft_fwd_event(is_sendmsg, ctx->protocol, src, &vip, NULL, svc_id, WEFT_VERDICT_NO_BACKEND, 0);
		else
			weft_fwd_event(is_sendmsg, ctx->protocol, src, &vip, &dst, svc_id, WEFT_VERDICT_REFUSED, WEFT_REFUSED_FAMILY);
		weft_refuse_econnrefused();
		return 0;
	}
	weft_ctx_set_dst(ctx, &dst, v6, mapped);
	weft_count(is_sendmsg ? WEFT_STAT_SENDMSG_XLATE : WEFT_STAT_CONNECT_XLATE);
	weft_fwd_event(is_sendmsg, ctx->protocol, src, &vip, &dst, svc_id, WEFT_VERDICT_TRANSLATED, 0);
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

/* Whether the connection attempt `p` comes from one of the agent's own sockets. The
 * mark is only the hint that makes the common case cheap: the proof is the sending
 * socket itself, found in this namespace's connection table by the reversed tuple (on
 * this node a SYN's sender is a local socket in SYN_SENT), which must be the agent's.
 * The network cannot forge it either: crossing a namespace clears the mark, and no
 * socket of this node's table sent that packet. */
static __always_inline int weft_syn_from_agent(struct __sk_buff *skb, const struct weft_pkt *p)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sender;
	__u32 len;
	int agent;

	if (!weft_settings.agent_mark || skb->mark != weft_settings.agent_mark)
		return 0;
	if (p->family == WEFT_FAMILY_V4) {
		__builtin_memcpy(&t.ipv4.saddr, p->daddr, 4);
		__builtin_memcpy(&t.ipv4.daddr, p->saddr, 4);
		t.ipv4.sport = p->dport;
		t.ipv4.dport = p->sport;
		len = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->daddr, 16);
		__builtin_memcpy(t.ipv6.daddr, p->saddr, 16);
		t.ipv6.sport = p->dport;
		t.ipv6.dport = p->sport;
		len = sizeof(t.ipv6);
	}
	sender = bpf_sk_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sender)
		return 0;
	agent = sender->state == BPF_TCP_SYN_SENT && weft_sk_is_agent(sender);
	bpf_sk_release(sender);
	return agent;
}

/* The last word on plaintext connections to a workload, at the workload's own listening
 * socket: whatever path the SYN took (loopback from this node, an interface without the
 * TC program, a node address no workload owns), a STRICT port accepts only the agent. The
 * workload is the listening socket's, by its cgroup, not the packet's destination: a
 * workload listening on a wildcard address is the same workload on every address of the
 * node, 127.0.0.1 and ::1 included. A port under AuthorizationPolicy that was not
 * steered to the agent is refused rather than let past the policy, and no one but the
 * agent may listen on the agent's ports. */
SEC("cgroup_skb/ingress")
int weft_in_guard(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct weft_inpol_val *v;
	struct weft_wl_val *wl;
	struct weft_pkt p = {};
	__u64 cgroup;
	int r;

	if (!sk || sk->state != BPF_TCP_LISTEN)
		return 1; /* established traffic: the common case, decided in two loads */
	cgroup = bpf_skb_cgroup_id(skb);
	if (weft_settings.agent_cgroup && cgroup == weft_settings.agent_cgroup)
		return 1; /* the agent's own listeners: the tunnel, steered plaintext, capture */
	r = weft_parse(skb, 0, &p);
	if (r == WEFT_PKT_OTHER)
		return 1;
	wl = bpf_map_lookup_elem(&weft_wl_v1, &cgroup);
	if (wl) {
		/* Judged (and counted) as the listening workload, whatever address was dialed. */
		__builtin_memset(p.daddr, 0, 16);
		__builtin_memcpy(p.daddr, wl->addr, 16);
		p.family = wl->family;
	}
	if (r == WEFT_PKT_OPAQUE) {
		if (!weft_inpol_lookup(&p, 0))
			return 1;
		weft_in_count(&p, WEFT_IN_STRICT_LOCAL, cgroup);
		return 0;
	}
	if (!weft_is_connect(&p))
		return 1;
	if (weft_is_agent_port(p.dport)) {
		/* Someone else listening on an agent port (the agent not yet started, or
		 * restarting) must not receive what was meant for the agent. */
		weft_in_count(&p, WEFT_IN_SQUATTED, cgroup);
		return 0;
	}
	if (weft_syn_from_agent(skb, &p))
		return 1;
	v = weft_inpol_lookup(&p, 1);
	if (!v || v->action == WEFT_INPOL_PASS)
		return 1;
	if (v->action == WEFT_INPOL_DROP) {
		weft_in_count(&p, WEFT_IN_STRICT_LOCAL, cgroup);
		return 0;
	}
	if (v->flags & WEFT_INPOL_F_AUTHZ) {
		weft_in_count(&p, WEFT_IN_UNSTEERABLE, cgroup);
		return 0;
	}
	return 1; /* steered for telemetry only: losing that is no reason to refuse */
}
