// SPDX-License-Identifier: Apache-2.0
// The libbpf API the agent uses: loading objects from memory, maps, links, pins, BTF.
#pragma once
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include "probe.h"
#include <linux/bpf.h>
#include <errno.h>
#include <sys/vfs.h>
#include <sys/mount.h>

#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <string.h>

/* The ARPHRD_* type of a network interface of the caller's network namespace (1 is
 * Ethernet), or -1 with errno. sysfs would answer for the namespace that mounted it,
 * which for an agent entered into a node namespace is the wrong one; an ioctl on a
 * socket of our own namespace is not. Swift cannot spell struct ifreq's unions. */
static inline int weft_if_arptype(const char *name)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int rc;

	if (fd < 0)
		return -1;
	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	rc = ioctl(fd, SIOCGIFHWADDR, &ifr);
	close(fd);
	return rc < 0 ? -1 : ifr.ifr_hwaddr.sa_family;
}
