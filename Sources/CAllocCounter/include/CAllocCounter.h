#ifndef WEFT_ALLOC_COUNTER_H
#define WEFT_ALLOC_COUNTER_H

/* Heap allocations made by the process so far (malloc, calloc, realloc, the aligned
 * allocators), counted by the definitions in counter.c, which take the place of libc's
 * in any executable that links this target. Only weft-proxy-bench does. */
long weft_alloc_count(void);

#endif
