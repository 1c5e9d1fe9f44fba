/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Flow events for `weft monitor`: one ring buffer shared (pinned) by every program. Off
 * (one array lookup) unless a reader is attached; when the buffer is full the event is
 * counted as lost and the hook goes on: the datapath never waits for a reader. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weft_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WEFT_EVENTS_BYTES);
} weft_events_v1 SEC(".maps");

/* key 0 → weft_evctl_val: until when a reader wants events. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weft_evctl_val);
} weft_evctl_v1 SEC(".maps");

/* key 0 → events lost to a full ring buffer, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} weft_evlost_v1 SEC(".maps");

/* A zeroed event of `kind` to fill in and submit, or NULL: no reader, or no room. */
static __always_inline struct weft_event *weft_event_start(__u8 kind)
{
	__u32 zero = 0;
	struct weft_evctl_val *ctl = bpf_map_lookup_elem(&weft_evctl_v1, &zero);
	struct weft_event *e;
	__u64 now;

	if (!ctl || !ctl->until_ns)
		return NULL;
	now = bpf_ktime_get_ns();
	if (now > ctl->until_ns)
		return NULL;
	e = bpf_ringbuf_reserve(&weft_events_v1, sizeof(*e), 0);
	if (!e) {
		__u64 *lost = bpf_map_lookup_elem(&weft_evlost_v1, &zero);

		if (lost)
			*lost += 1; /* per-CPU slot */
		return NULL;
	}
	/* Reserved memory is not cleared: nothing of the kernel's may reach the reader. */
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = now;
	e->kind = kind;
	return e;
}
