/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The one definition of every BPF map key, value and constant, shared by the C programs
 * and by Swift (imported as the CWeftABI module). Fixed-width types only; every struct's
 * size is pinned by a _Static_assert, and a Swift unit test compares each layout with the
 * BTF the BPF compiler emitted, so the two sides cannot drift apart silently. */
#ifndef WEFT_ABI_H
#define WEFT_ABI_H

#include <linux/types.h>

/* Address families as stored in keys (not AF_*: those differ between libcs and BPF). */
#define WEFT_FAMILY_V4 4
#define WEFT_FAMILY_V6 6

/* Load-balancing algorithm of a service (weft_svc_val.algo). All three index the
 * service's selection table (a range of weft_slot_v1): RANDOM with a random number,
 * ROUND_ROBIN with a shared per-table counter, MAGLEV with a hash of the client address. */
enum weft_lb_algo {
	WEFT_LB_RANDOM = 0,
	WEFT_LB_ROUND_ROBIN = 1,
	WEFT_LB_MAGLEV = 2,
};

/* Backend lifecycle. A removed backend has no entry at all. */
enum weft_backend_state {
	WEFT_BACKEND_ACTIVE = 0,
	WEFT_BACKEND_DRAINING = 1, /* no new connections; established ones keep working */
};

/* Indexes of weft_stats_v1 (per-CPU counters). */
enum weft_stat {
	WEFT_STAT_CONNECT_XLATE = 0,    /* connect() to a VIP rewritten to a backend */
	WEFT_STAT_CONNECT_NO_BACKEND,   /* connect() to a VIP with no active backend: refused */
	WEFT_STAT_SENDMSG_XLATE,        /* UDP datagram to a VIP rewritten */
	WEFT_STAT_SENDMSG_NO_BACKEND,   /* UDP datagram to a VIP with no active backend: refused */
	WEFT_STAT_RECVMSG_REVNAT,       /* UDP reply source rewritten back to the VIP */
	WEFT_STAT_PEERNAME_REVNAT,      /* getpeername() answered with the VIP */
	WEFT_STAT_REVNAT_FULL,          /* could not record a translation (map update failed) */
	WEFT_STAT_CONNECT_CAPTURE,      /* connect() to an L7 service sent to the agent's listener */
	WEFT_STAT_CAPTURE_REKEYED,      /* captured connection's origin re-keyed by client address */
	WEFT_STAT_CAPTURE_FULL,         /* could not record a captured connection's origin */
	WEFT_STAT_AGENT_BYPASS,         /* connect() by the agent itself: never captured */
	WEFT_STAT_DNS_REDIRECT,         /* a DNS query (port 53, UDP or TCP) sent to the agent's DNS server */
	WEFT_STAT_EGRESS_REFUSED,       /* connect()/sendmsg() to an address the registry does not know,
					 * under REGISTRY_ONLY: refused */
	WEFT_STAT_MAX,
};
/* weft_stats_v1 has room for counters later builds add, so an adopted map still fits. */
#define WEFT_STAT_SLOTS 64

/* weft_svc_val.flags */
#define WEFT_SVC_F_CAPTURE 0x01 /* TCP connections go to the agent's outbound listener */

/* Service frontend: VIP, port, L4 protocol. IPv4 addresses occupy addr[0..3], the rest 0. */
struct weft_svc_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family; /* WEFT_FAMILY_V4 / _V6 */
};

struct weft_svc_val {
	__u32 table_off;     /* first slot of the selection table in weft_slot_v1 */
	__u32 table_size;    /* slots in that table */
	__u16 backend_count; /* active backends in the table */
	__u8 algo;           /* enum weft_lb_algo */
	__u8 flags;          /* WEFT_SVC_F_* */
	__u32 svc_id;        /* stable id of the service, for counters and inspection */
	__u64 fingerprint;   /* hash of (algo, table, backends) — lets a restarted agent diff */
};

/* Backend, keyed by a __u32 backend id that is stable while the backend exists. */
struct weft_backend_val {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 state;  /* enum weft_backend_state */
	__u32 weight;
};

/* Reverse translation: the socket and the backend it was sent to → the VIP it dialed. */
struct weft_revnat_key {
	__u64 cookie;
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad[5];
};

struct weft_revnat_val {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad;
};

/* Workload source address, keyed by cgroup id: what `useSourceIp` hashes when a client
 * socket is not yet bound to an address at connect() time. */
struct weft_wl_val {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

/* A captured connection's client address (the agent's accepted socket's peer). */
struct weft_capture_key {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad;
};

/* Where a captured connection was going and who opened it. connect() records it by socket
 * cookie (weft_pending_v1); once the kernel has chosen the client's port, sockops moves it
 * to weft_capture_v1 keyed by the client address, which is all the agent can see. */
struct weft_capture_val {
	__u8 addr[16];      /* the VIP dialed */
	__be16 port;
	__u8 family;
	__u8 pad[5];
	__u64 cgroup_id;    /* cgroup of the process that called connect(): the source workload */
};

/* Load-time settings (each object's const volatile weft_settings, written before load). */
struct weft_settings {
	__be16 proxy_port;   /* outbound listener on 127.0.0.1 / ::1; 0 = capture off */
	__be16 inbound_port; /* plaintext inbound listener (0.0.0.0 / ::) steered to; 0 = none */
	__u32 agent_mark;    /* SO_MARK of the agent's own sockets; 0 = none */
	__be16 tunnel_port;  /* mTLS tunnel listener: never subject to inbound policy */
	__be16 dns_port;     /* the agent's DNS server on 127.0.0.1 / ::1 that workloads'
			      * queries to port 53 go to; 0 = DNS left alone */
	__u8 no_set_retval;  /* 1: the kernel's connect hooks have no bpf_set_retval (before
			      * 6.1), so a refused connect() gets the hook's EPERM */
	__u8 pad[3];
	__u64 agent_cgroup;  /* cgroup v2 id of the agent's own cgroup: a socket created there is
			      * the agent's (the mark alone is forgeable with CAP_NET_ADMIN) */
};

/* What happens to a plaintext TCP connection opened to a workload of this node
 * (weft_inpol_val.action), from its PeerAuthentication mode and the policy on the port. */
enum weft_inpol_action {
	WEFT_INPOL_PASS = 0,  /* PERMISSIVE / DISABLE with nothing for the agent to do */
	WEFT_INPOL_DROP = 1,  /* STRICT: only the agent (mTLS tunnel) may connect */
	WEFT_INPOL_STEER = 2, /* into the agent's inbound listener (policy or L7 telemetry) */
};

/* weft_inpol_val.flags */
#define WEFT_INPOL_F_AUTHZ 0x01 /* an AuthorizationPolicy applies: if the connection cannot
				 * be steered to the agent it is refused, not let through */

/* A workload port (port 0: the workload's other ports). */
struct weft_inpol_key {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad;
};

struct weft_inpol_val {
	__u8 action; /* enum weft_inpol_action */
	__u8 flags;  /* WEFT_INPOL_F_* */
	__u8 pad[2];
};

/* Why a plaintext connection attempt to a workload was handled (weft_inctr_key.reason). */
enum weft_in_reason {
	WEFT_IN_STRICT_NETWORK = 0, /* STRICT, arrived on an interface: dropped at TC ingress */
	WEFT_IN_STRICT_LOCAL = 1,   /* STRICT, reached the workload's socket: dropped there */
	WEFT_IN_STEERED = 2,        /* steered into the agent's inbound listener */
	WEFT_IN_NO_LISTENER = 3,    /* to be steered, but the agent is not listening: dropped */
	WEFT_IN_UNSTEERABLE = 4,    /* policy applies but it did not come through TC (same node,
				     * or an interface without the program): refused */
	WEFT_IN_SQUATTED = 5,       /* to an agent port, at a listener that is not the agent's:
				     * refused (keyed by the listener's workload, else the address) */
	WEFT_IN_REASONS,
};

/* Counter of plaintext connection attempts by workload address and reason. */
struct weft_inctr_key {
	__u8 addr[16];
	__u8 family;
	__u8 reason; /* enum weft_in_reason */
	__u8 pad[2];
};

/* What a flow event records (weft_event.kind). */
enum weft_event_kind {
	WEFT_EV_CONNECT = 1, /* connect() to a service frontend (TCP, or connected UDP) */
	WEFT_EV_SENDMSG = 2, /* an unconnected UDP datagram to a service frontend */
	WEFT_EV_INBOUND = 3, /* a plaintext connection attempt to a workload, judged by inbound
			      * policy (weft_event.reason is an enum weft_in_reason) */
};

/* What the datapath did (weft_event.verdict). */
enum weft_event_verdict {
	WEFT_VERDICT_TRANSLATED = 1, /* sent to the backend in xaddr */
	WEFT_VERDICT_CAPTURED = 2,   /* sent to the agent's outbound listener (xaddr) */
	WEFT_VERDICT_NO_BACKEND = 3, /* refused: the service has no active backend */
	WEFT_VERDICT_REFUSED = 4,    /* refused: reason WEFT_REFUSED_* */
	WEFT_VERDICT_DROPPED = 5,    /* inbound: the SYN was dropped */
	WEFT_VERDICT_STEERED = 6,    /* inbound: steered into the agent's inbound listener */
	WEFT_VERDICT_DNS = 7,        /* a DNS query sent to the agent's DNS server (xaddr) */
};

/* weft_event.reason of a connect refused (WEFT_VERDICT_REFUSED). */
enum weft_refused_reason {
	WEFT_REFUSED_CAPTURE_FULL = 1, /* the origin of a captured connection could not be recorded */
	WEFT_REFUSED_FAMILY = 2,       /* the backend's address family cannot be written into the socket's */
	WEFT_REFUSED_EGRESS = 3,       /* REGISTRY_ONLY: the destination is not in the mesh's registry */
};

/* The mesh's outbound traffic policy (weft_egress_mode_v1, key 0). */
enum weft_egress_mode {
	WEFT_EGRESS_ALLOW_ANY = 0,
	WEFT_EGRESS_REGISTRY_ONLY = 1, /* only destinations in weft_egress_v1 (and loopback) */
};

/* A destination the registry knows (weft_egress_v1, an LPM trie). The port comes first so
 * that one entry is one port of an address range; port 0 is every port (a second lookup).
 * prefixlen counts the bits after it: 32 (port, family, pad) + the address's prefix. */
struct weft_egress_key {
	__u32 prefixlen;
	__be16 port;
	__u8 family;
	__u8 pad;
	__u8 addr[16];
};

/* One flow event in weft_events_v1 (a ring buffer), for `weft monitor`. Written only while
 * a reader keeps weft_evctl_v1's deadline in the future; a full ring buffer loses the event
 * (counted in weft_evlost_v1), it never holds up the hook. */
struct weft_event {
	__u64 ts_ns;     /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cgroup_id; /* connect: the caller's cgroup; inbound at the socket: the listener's */
	__u8 saddr[16];  /* connect: the socket's bound address (zero if not yet bound);
			  * inbound: the packet's source */
	__u8 daddr[16];  /* connect: the frontend dialed; inbound: the workload judged */
	__u8 xaddr[16];  /* connect: where the socket was sent (backend, agent listener) */
	__be16 sport;
	__be16 dport;
	__be16 xport;
	__u8 family;     /* of saddr and daddr (WEFT_FAMILY_*) */
	__u8 xfamily;    /* of xaddr; 0 when nothing was translated */
	__u8 kind;       /* enum weft_event_kind */
	__u8 verdict;    /* enum weft_event_verdict */
	__u8 reason;     /* enum weft_in_reason (inbound) or weft_refused_reason */
	__u8 proto;      /* IPPROTO_TCP / IPPROTO_UDP */
	__u32 svc_id;    /* weft_svc_val.svc_id of the frontend (connect) */
};

/* weft_evctl_v1's one value: events are written while bpf_ktime_get_ns() < until_ns. A
 * reader pushes the deadline a few seconds ahead every second, so a reader that dies
 * (even by SIGKILL) stops the writing within seconds and costs nothing afterwards. */
struct weft_evctl_val {
	__u64 until_ns;
};

/* weft_event is only ever a ring buffer record, so the compiler puts no BTF of it in the
 * object for the Swift test to compare with: its offsets are pinned here instead, checked
 * by both compilers (the BPF build and Swift's import of this header). */
_Static_assert(sizeof(struct weft_event) == 80, "weft_event layout");
_Static_assert(__builtin_offsetof(struct weft_event, saddr) == 16 && __builtin_offsetof(struct weft_event, xaddr) == 48 &&
	       __builtin_offsetof(struct weft_event, sport) == 64 && __builtin_offsetof(struct weft_event, family) == 70 &&
	       __builtin_offsetof(struct weft_event, proto) == 75 && __builtin_offsetof(struct weft_event, svc_id) == 76,
	       "weft_event layout");
_Static_assert(sizeof(struct weft_evctl_val) == 8, "weft_evctl_val layout");
_Static_assert(sizeof(struct weft_capture_key) == 20, "weft_capture_key layout");
_Static_assert(sizeof(struct weft_capture_val) == 32, "weft_capture_val layout");
_Static_assert(sizeof(struct weft_settings) == 24, "weft_settings layout");
_Static_assert(sizeof(struct weft_inpol_key) == 20, "weft_inpol_key layout");
_Static_assert(sizeof(struct weft_inpol_val) == 4, "weft_inpol_val layout");
_Static_assert(sizeof(struct weft_egress_key) == 24, "weft_egress_key layout");
_Static_assert(sizeof(struct weft_inctr_key) == 20, "weft_inctr_key layout");
_Static_assert(sizeof(struct weft_svc_key) == 20, "weft_svc_key layout");
_Static_assert(sizeof(struct weft_svc_val) == 24, "weft_svc_val layout");
_Static_assert(sizeof(struct weft_backend_val) == 24, "weft_backend_val layout");
_Static_assert(sizeof(struct weft_revnat_key) == 32, "weft_revnat_key layout");
_Static_assert(sizeof(struct weft_revnat_val) == 20, "weft_revnat_val layout");
_Static_assert(sizeof(struct weft_wl_val) == 20, "weft_wl_val layout");

/* Map capacities, shared so the agent can refuse a config that would not fit
 * (DesiredState.capacityProblems) instead of failing half-way through an apply. */
#define WEFT_MAX_SERVICES 65536
#define WEFT_MAX_BACKENDS 131072
#define WEFT_MAX_REVNAT 262144
#define WEFT_MAX_WORKLOADS 16384
#define WEFT_MAX_CAPTURED 65536
/* Workload ports with an inbound rule (a workload's default is one more). */
#define WEFT_MAX_INBOUND 65536
#define WEFT_MAX_EGRESS 65536
/* Default size of weft_slot_v1 (all selection tables together; 16 MiB of kernel memory).
 * The agent's --lb-slots sets it before load. */
#define WEFT_DEFAULT_SLOTS 4194304
/* Bytes of weft_events_v1: ~11,900 events of 80 bytes (+8 of header) in flight. */
#define WEFT_EVENTS_BYTES (1 << 20)

#endif
