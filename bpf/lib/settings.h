/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Load-time settings, one copy per object (DESIGN.md: const volatile, set before load). */
#pragma once
#include "weft_abi.h"

const volatile struct weft_settings weft_settings = {};
