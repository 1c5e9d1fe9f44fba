/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-CPU counters: one increment per hook decision, read by `weft map dump weft_stats_v1`. */
#pragma once
#include "maps.h"

static __always_inline void weft_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&weft_stats_v1, &stat);

	if (v)
		*v += 1; /* per-CPU slot: no other CPU writes it, no atomic needed */
}
