/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-level load balancing: find the service a socket addressed, pick a backend from
 * the service's selection table, remember the translation for the reverse direction. */
#pragma once
#include <linux/in.h>
#include "maps.h"
#include "stats.h"

#define WEFT_ECONNREFUSED 111

/* Address + port as this library passes them around; same layout rules as weft_svc_key. */
struct weft_l4addr {
	__u8 addr[16];
	__be16 port;
	__u8 family;
};

/* murmur3's 32-bit finalizer: cheap and spreads every input bit, which is all a table
 * index needs (the table, not the hash, carries the weights). */
static __always_inline __u32 weft_mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 weft_hash_addr(const __u8 addr[16])
{
	__u32 w[4];

	__builtin_memcpy(w, addr, 16);
	return weft_mix32(w[0] ^ weft_mix32(w[1] ^ weft_mix32(w[2] ^ weft_mix32(w[3] ^ 0x9e3779b9))));
}

static __always_inline int weft_addr_is_zero(const __u8 addr[16])
{
	__u64 w[2];

	__builtin_memcpy(w, addr, 16);
	return (w[0] | w[1]) == 0;
}

/* The client address that `consistentHash.useSourceIp` hashes. At connect() time most
 * client sockets are not bound yet, so an unbound socket is identified by the address of
 * the workload its cgroup belongs to (weft_wl_v1); only if neither is known does every
 * such client hash alike. */
static __always_inline __u32 weft_source_hash(const __u8 bound[16])
{
	if (!weft_addr_is_zero(bound))
		return weft_hash_addr(bound);

	__u64 cgid = bpf_get_current_cgroup_id();
	struct weft_wl_val *wl = bpf_map_lookup_elem(&weft_wl_v1, &cgid);

	if (wl)
		return weft_hash_addr(wl->addr);
	return weft_mix32((__u32)cgid ^ (__u32)(cgid >> 32));
}

/* Pick an active backend of svc. `hash` indexes Maglev tables; with `sticky` set, `hash`
 * also replaces the random/round-robin position (UDP datagrams of one socket stay together). */
static __always_inline struct weft_backend_val *
weft_select(const struct weft_svc_val *svc, __u32 hash, int sticky)
{
	__u32 table_off = svc->table_off;
	__u32 size = svc->table_size;
	__u32 slot, *backend_id;
	struct weft_backend_val *be;

	if (size == 0)
		return NULL;

	if (svc->algo == WEFT_LB_MAGLEV || sticky) {
		slot = hash;
	} else if (svc->algo == WEFT_LB_ROUND_ROBIN) {
		__u32 *pos = bpf_map_lookup_elem(&weft_rr_v1, &table_off);

		if (!pos) {
			slot = bpf_get_prandom_u32();
		} else {
#ifdef WEFT_NO_ATOMIC_FETCH
			/* The build for kernels before 5.12, which refuse an object holding an
			 * atomic that returns the old value anywhere (even where no path goes;
			 * and clang's v3 writes any 32-bit atomic add so): the turn is read and
			 * written back, so two CPUs connecting at once may take the same one. */
			slot = *pos;
			*pos = slot + 1;
#else
			slot = __sync_fetch_and_add(pos, 1);
#endif
		}
	} else {
		slot = bpf_get_prandom_u32();
	}
	slot = table_off + slot % size;

	backend_id = bpf_map_lookup_elem(&weft_slot_v1, &slot);
	if (!backend_id)
		return NULL;
	be = bpf_map_lookup_elem(&weft_backend_v1, backend_id);
	/* A table never names a draining backend (the agent swaps the table first), but a
	 * connect() racing that swap may still read the old table: refuse the draining one
	 * rather than open a new connection to it. */
	if (!be || be->state != WEFT_BACKEND_ACTIVE)
		return NULL;
	return be;
}

/* Record that socket `cookie`, sending to backend `be`, meant `vip`. */
static __always_inline void weft_revnat_store(__u64 cookie, const struct weft_backend_val *be,
					      const struct weft_l4addr *vip)
{
	struct weft_revnat_key key = {};
	struct weft_revnat_val val = {};

	key.cookie = cookie;
	__builtin_memcpy(key.addr, be->addr, 16);
	key.port = be->port;
	key.family = be->family;
	__builtin_memcpy(val.addr, vip->addr, 16);
	val.port = vip->port;
	val.family = vip->family;
	if (bpf_map_update_elem(&weft_revnat_v1, &key, &val, BPF_ANY))
		weft_count(WEFT_STAT_REVNAT_FULL);
}

/* The VIP that socket `cookie` dialed when it reached `peer`, or NULL. */
static __always_inline struct weft_revnat_val *
weft_revnat_lookup(__u64 cookie, const struct weft_l4addr *peer)
{
	struct weft_revnat_key key = {};

	key.cookie = cookie;
	__builtin_memcpy(key.addr, peer->addr, 16);
	key.port = peer->port;
	key.family = peer->family;
	return bpf_map_lookup_elem(&weft_revnat_v1, &key);
}

/* Forward translation shared by connect and sendmsg: on success *dst holds the backend. */
/* WEFT_XLATE_CAPTURE: the service wants the agent's proxy and `may_capture` allowed it;
 * *dst is still the VIP. */
enum weft_xlate { WEFT_XLATE_NONE, WEFT_XLATE_DONE, WEFT_XLATE_NO_BACKEND, WEFT_XLATE_CAPTURE };

static __always_inline enum weft_xlate
weft_xlate_fwd(__u64 cookie, __u8 proto, struct weft_l4addr *dst, const __u8 src[16], __u32 sticky_hash, int sticky,
	       int may_capture, __u32 *svc_id)
{
	struct weft_svc_key key = {};
	struct weft_svc_val *svc;
	struct weft_backend_val *be;
	struct weft_l4addr vip = *dst;

	__builtin_memcpy(key.addr, dst->addr, 16);
	key.port = dst->port;
	key.proto = proto;
	key.family = dst->family;
	svc = bpf_map_lookup_elem(&weft_svc_v1, &key);
	if (!svc)
		return WEFT_XLATE_NONE;
	*svc_id = svc->svc_id;
	if (may_capture && proto == IPPROTO_TCP && (svc->flags & WEFT_SVC_F_CAPTURE))
		return WEFT_XLATE_CAPTURE;

	be = weft_select(svc, svc->algo == WEFT_LB_MAGLEV ? weft_source_hash(src) : sticky_hash, sticky);
	if (!be)
		return WEFT_XLATE_NO_BACKEND;

	weft_revnat_store(cookie, be, &vip);
	__builtin_memcpy(dst->addr, be->addr, 16);
	dst->port = be->port;
	dst->family = be->family;
	return WEFT_XLATE_DONE;
}
