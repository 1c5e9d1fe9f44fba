/* Counts heap allocations for the in-process proxy benchmark (weft-proxy-bench), the way
 * SwiftNIO's allocation-counter tests do: the executable defines malloc and friends, so
 * every allocation of the process — Swift runtime, Foundation, NIO, weft — comes here
 * first, is counted, and is served by glibc's own allocator (__libc_*). Never linked
 * into the agent. */
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include "CAllocCounter.h"

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *ptr, size_t size);
extern void __libc_free(void *ptr);
extern void *__libc_memalign(size_t alignment, size_t size);

static _Atomic long allocations;

static inline void counted(void) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); }

long weft_alloc_count(void) { return atomic_load_explicit(&allocations, memory_order_relaxed); }

void *malloc(size_t size)
{
	counted();
	return __libc_malloc(size);
}

void *calloc(size_t count, size_t size)
{
	counted();
	return __libc_calloc(count, size);
}

/* A realloc may move the block: it counts as an allocation (ByteBuffer growth is one). */
void *realloc(void *ptr, size_t size)
{
	counted();
	return __libc_realloc(ptr, size);
}

void free(void *ptr) { __libc_free(ptr); }

void *memalign(size_t alignment, size_t size)
{
	counted();
	return __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size)
{
	counted();
	return __libc_memalign(alignment, size);
}

int posix_memalign(void **out, size_t alignment, size_t size)
{
	void *p;

	if (alignment < sizeof(void *) || (alignment & (alignment - 1)))
		return EINVAL;
	counted();
	p = __libc_memalign(alignment, size);
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}
