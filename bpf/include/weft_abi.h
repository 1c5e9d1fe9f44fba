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
	WEFT_STAT_MAX,
};

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
	__u8 flags;          /* reserved, 0 */
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
/* Default size of weft_slot_v1 (all selection tables together; 16 MiB of kernel memory).
 * The agent's --lb-slots sets it before load. */
#define WEFT_DEFAULT_SLOTS 4194304

#endif
