/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every BPF map weft uses. The Swift side finds them by these names. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weft_abi.h"

/* weft_svc_key → weft_svc_val: the service frontends (VIP:port/proto). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_SERVICES);
	__type(key, struct weft_svc_key);
	__type(value, struct weft_svc_val);
} weft_svc_v1 SEC(".maps");

/* backend id (__u32) → weft_backend_val: where a backend is, its weight and state. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct weft_backend_val);
} weft_backend_v1 SEC(".maps");

/* slot → backend id: every service's selection table, each a contiguous range
 * [table_off, table_off + table_size). One flat array rather than a map per service:
 * updating a map-in-map makes the kernel wait for an RCU grace period per syscall
 * (~10 ms), which would make applying 10,000 services take minutes. A service switches
 * tables by one update of its weft_svc_v1 entry, so a connect() sees the old table or
 * the new one, never a mix. Sized by the agent (--lb-slots) before load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEFT_DEFAULT_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} weft_slot_v1 SEC(".maps");

/* table offset → round-robin position, shared by all CPUs (atomically incremented). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_SERVICES * 2);
	__type(key, __u32);
	__type(value, __u32);
} weft_rr_v1 SEC(".maps");

/* weft_revnat_key → weft_revnat_val: which VIP a socket dialed, for getpeername() and
 * UDP replies. LRU: entries of closed sockets age out instead of filling the map. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_MAX_REVNAT);
	__type(key, struct weft_revnat_key);
	__type(value, struct weft_revnat_val);
} weft_revnat_v1 SEC(".maps");

/* cgroup id (__u64) → weft_wl_val: a workload's address (useSourceIp for unbound sockets). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_WORKLOADS);
	__type(key, __u64);
	__type(value, struct weft_wl_val);
} weft_wl_v1 SEC(".maps");

/* enum weft_stat → __u64 count, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEFT_STAT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} weft_stats_v1 SEC(".maps");

/* socket cookie (__u64) → weft_capture_val: a captured connect() whose client port the
 * kernel has not chosen yet. Lives from connect() to sockops' TCP_CONNECT_CB. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_MAX_CAPTURED);
	__type(key, __u64);
	__type(value, struct weft_capture_val);
} weft_pending_v1 SEC(".maps");

/* weft_capture_key → weft_capture_val: the original destination and source cgroup of a
 * captured connection, by client address; the agent reads and deletes it on accept. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_MAX_CAPTURED);
	__type(key, struct weft_capture_key);
	__type(value, struct weft_capture_val);
} weft_capture_v1 SEC(".maps");
