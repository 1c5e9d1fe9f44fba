// SPDX-License-Identifier: Apache-2.0
// Kernel feature probes (weft doctor, agent start). None of them attaches anything to the
// node: programs are loaded and closed at once, the link commands are asked with no
// target, and TC is tried on the loopback device of a network namespace that a thread
// makes for itself and that goes away with the thread.
#pragma once
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Not in Debian 12's linux/bpf.h (6.1): tcx arrived in 6.6. */
#define WEFT_BPF_TCX_INGRESS 46
/* <sched.h> declares CLONE_NEWNET only under _GNU_SOURCE, which Swift's importer does not set. */
#define WEFT_CLONE_NEWNET 0x40000000

/* Loads `[call helper;] r0 = 1; exit` as a program of `type` that expects `attach`
 * (helper < 0: no call). Returns 0 when the kernel took it, else -errno; *helper_unknown
 * is set when the verifier's log says this program type has no such helper (the other
 * refusals — the call's arguments are nonsense — mean it has it). */
static inline int weft_probe_load(enum bpf_prog_type type, enum bpf_attach_type attach, int helper, int *helper_unknown)
{
	struct bpf_insn insns[3];
	char log[4096];
	int n = 0, fd;
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = attach);

	memset(insns, 0, sizeof(insns));
	if (helper >= 0) {
		insns[n].code = BPF_JMP | BPF_CALL;
		insns[n++].imm = helper;
	}
	insns[n].code = BPF_ALU64 | BPF_MOV | BPF_K; /* r0 = 1 */
	insns[n++].imm = 1;
	insns[n++].code = BPF_JMP | BPF_EXIT;
	*helper_unknown = 0;
	if (helper >= 0) {
		log[0] = 0;
		opts.log_buf = log;
		opts.log_size = sizeof(log);
		opts.log_level = 1;
	}
	fd = bpf_prog_load(type, NULL, "GPL", insns, n, &opts);
	if (fd >= 0) {
		close(fd);
		return 0;
	}
	fd = -errno;
	if (helper >= 0 && (strstr(log, "unknown func") || strstr(log, "invalid func") ||
			    strstr(log, "cannot use helper")))
		*helper_unknown = 1;
	return fd;
}

/* The helper calls of a program of an opened (not loaded) object: their ids, each once.
 * Returns how many (at most max). Calls to subprograms and kfuncs are not helpers. */
static inline int weft_program_helpers(const struct bpf_program *prog, int *ids, int max)
{
	const struct bpf_insn *in = bpf_program__insns(prog);
	size_t cnt = bpf_program__insn_cnt(prog);
	int k = 0;

	for (size_t i = 0; in && i < cnt; i++) {
		int seen = 0;
		if (in[i].code != (BPF_JMP | BPF_CALL) || in[i].src_reg != 0)
			continue;
		for (int j = 0; j < k; j++)
			seen |= ids[j] == in[i].imm;
		if (!seen && k < max)
			ids[k++] = in[i].imm;
	}
	return k;
}

/* Whether a program's instructions include an atomic that returns the old value (fetch
 * add/and/or/xor, xchg, cmpxchg: Linux 5.12); a plain atomic add is older. */
static inline int weft_program_uses_atomic_fetch(const struct bpf_program *prog)
{
	const struct bpf_insn *in = bpf_program__insns(prog);
	size_t cnt = bpf_program__insn_cnt(prog);

	for (size_t i = 0; in && i < cnt; i++)
		if (BPF_CLASS(in[i].code) == BPF_STX && BPF_MODE(in[i].code) == BPF_ATOMIC &&
		    (in[i].imm & BPF_FETCH))
			return 1;
	return 0;
}

/* Loads a program doing one atomic fetch-and-add on its stack: 0, or -errno. */
static inline int weft_probe_atomic_fetch(void)
{
	struct bpf_insn insns[6];
	int fd;

	memset(insns, 0, sizeof(insns));
	insns[0].code = BPF_ST | BPF_MEM | BPF_DW; /* *(u64 *)(r10 - 8) = 0 */
	insns[0].dst_reg = BPF_REG_10;
	insns[0].off = -8;
	insns[1].code = BPF_ALU64 | BPF_MOV | BPF_K; /* r1 = 1 */
	insns[1].dst_reg = BPF_REG_1;
	insns[1].imm = 1;
	insns[2].code = BPF_STX | BPF_ATOMIC | BPF_DW; /* r1 = atomic_fetch_add(r10 - 8, r1) */
	insns[2].dst_reg = BPF_REG_10;
	insns[2].src_reg = BPF_REG_1;
	insns[2].off = -8;
	insns[2].imm = BPF_ADD | BPF_FETCH;
	insns[3].code = BPF_ALU64 | BPF_MOV | BPF_K; /* r0 = 1 */
	insns[3].imm = 1;
	insns[4].code = BPF_JMP | BPF_EXIT;
	fd = bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, NULL, "GPL", insns, 5, NULL);
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

/* BPF_MAP_LOOKUP_AND_DELETE_ELEM on an (empty) LRU hash map: ENOENT where the kernel
 * takes from hash maps this way (5.14), ENOTSUPP (524) before. Returns -errno. */
static inline int weft_probe_hash_lookup_and_delete(void)
{
	__u32 key = 0, value;
	int fd = bpf_map_create(BPF_MAP_TYPE_LRU_HASH, NULL, 4, 4, 8, NULL);
	int rc;

	if (fd < 0)
		return -errno;
	rc = bpf_map_lookup_and_delete_elem(fd, &key, &value) ? -errno : 0;
	close(fd);
	return rc;
}

/* BPF_LINK_CREATE and BPF_LINK_UPDATE asked with no program: a kernel that has the
 * command says EBADF, one that does not EINVAL. Returns -errno. */
static inline int weft_probe_link_create(void)
{
	return bpf_link_create(-1, -1, BPF_CGROUP_INET4_CONNECT, NULL);
}

static inline int weft_probe_link_update(void)
{
	return bpf_link_update(-1, -1, NULL);
}

/* What TC offers, tried on a private network namespace's loopback: 0 or -errno each. */
struct weft_tc_probe {
	int netns;	/* unshare(CLONE_NEWNET) */
	int program;	/* loading a sched_cls program */
	int clsact;	/* creating the clsact qdisc (sch_ingress) */
	int filter;	/* a cls_bpf direct-action filter on it */
	int tcx;	/* a tcx ingress link (Linux 6.6) */
};

static void *weft_tc_probe_thread(void *arg)
{
	struct weft_tc_probe *r = arg;
	struct bpf_insn pass[2];
	int fd, link;
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = 1, .attach_point = BPF_TC_INGRESS);
	LIBBPF_OPTS(bpf_tc_opts, tc, .handle = 1, .priority = 1);

	r->program = r->clsact = r->filter = r->tcx = -ENOEXEC;
	/* Only this thread moves: the namespace is freed when it exits. */
	if (syscall(SYS_unshare, WEFT_CLONE_NEWNET) != 0) {
		r->netns = -errno;
		return NULL;
	}
	r->netns = 0;
	memset(pass, 0, sizeof(pass));
	pass[0].code = BPF_ALU64 | BPF_MOV | BPF_K; /* r0 = -1: TC_ACT_UNSPEC, carry on */
	pass[0].imm = -1;
	pass[1].code = BPF_JMP | BPF_EXIT;
	fd = bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, NULL, "GPL", pass, 2, NULL);
	if (fd < 0) {
		r->program = -errno;
		return NULL;
	}
	r->program = 0;
	r->clsact = bpf_tc_hook_create(&hook);
	if (r->clsact == 0) {
		tc.prog_fd = fd;
		r->filter = bpf_tc_attach(&hook, &tc);
	}
	link = bpf_link_create(fd, 1, (enum bpf_attach_type)WEFT_BPF_TCX_INGRESS, NULL);
	r->tcx = link >= 0 ? 0 : link;
	if (link >= 0)
		close(link);
	close(fd);
	return NULL;
}

static inline void weft_probe_tc(struct weft_tc_probe *r)
{
	pthread_t t;
	int rc = pthread_create(&t, NULL, weft_tc_probe_thread, r);

	if (rc != 0) {
		r->netns = -rc;
		return;
	}
	pthread_join(t, NULL);
}

/* Helper ids and names, from the header's own enum, for the helpers weft's objects call
 * and the probe table names. */
struct weft_helper_name {
	int id;
	const char *name;
};

#define WEFT_HELPER(n) { BPF_FUNC_##n, "bpf_" #n }
static const struct weft_helper_name weft_helper_names[] = {
	WEFT_HELPER(map_lookup_elem), WEFT_HELPER(map_update_elem), WEFT_HELPER(map_delete_elem),
	WEFT_HELPER(ktime_get_ns), WEFT_HELPER(get_prandom_u32), WEFT_HELPER(skb_load_bytes),
	WEFT_HELPER(get_socket_cookie), WEFT_HELPER(skb_cgroup_id), WEFT_HELPER(get_current_cgroup_id),
	WEFT_HELPER(sk_lookup_tcp), WEFT_HELPER(sk_lookup_udp), WEFT_HELPER(sk_release),
	WEFT_HELPER(sk_assign), WEFT_HELPER(sk_cgroup_id), WEFT_HELPER(ringbuf_reserve),
	WEFT_HELPER(ringbuf_submit), WEFT_HELPER(ringbuf_output), WEFT_HELPER(set_retval),
	WEFT_HELPER(get_retval), WEFT_HELPER(get_current_pid_tgid), WEFT_HELPER(skc_lookup_tcp),
	WEFT_HELPER(map_push_elem), WEFT_HELPER(get_netns_cookie), WEFT_HELPER(sk_storage_get),
	WEFT_HELPER(msg_redirect_hash), WEFT_HELPER(sock_hash_update), WEFT_HELPER(redirect),
	WEFT_HELPER(get_hash_recalc), WEFT_HELPER(skb_store_bytes), WEFT_HELPER(l3_csum_replace),
	WEFT_HELPER(l4_csum_replace), WEFT_HELPER(get_current_comm),
};
#undef WEFT_HELPER

static inline const char *weft_helper_name(int id)
{
	for (size_t i = 0; i < sizeof(weft_helper_names) / sizeof(weft_helper_names[0]); i++)
		if (weft_helper_names[i].id == id)
			return weft_helper_names[i].name;
	return NULL;
}
