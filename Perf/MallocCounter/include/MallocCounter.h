// Counts heap allocations made by the calling thread, by interposing malloc, calloc and realloc in the executable
// that links this target (es-perf only). The counts back es-perf's "allocations per operation" figures.
#ifndef MALLOC_COUNTER_H
#define MALLOC_COUNTER_H
#include <stdint.h>

/// Allocations (malloc, calloc, realloc) made by this thread since it started.
uint64_t mc_thread_allocations(void);

#endif
