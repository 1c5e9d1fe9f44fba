// SPDX-License-Identifier: Apache-2.0
// The libbpf API the agent uses: loading objects from memory, maps, links, pins, BTF.
#pragma once
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <linux/bpf.h>
#include <errno.h>
#include <sys/vfs.h>
#include <sys/mount.h>
