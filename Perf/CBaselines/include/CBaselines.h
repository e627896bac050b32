// Same-run baselines for es-perf, in plain C: what the hardware and liburing give without the reactor.
#ifndef CBASELINES_H
#define CBASELINES_H
#include <stdint.h>

/// Submits and reaps `total` io_uring NOPs, `batch` per submit, on a fresh ring; returns operations per second,
/// or a negative errno.
double cb_nop_ops_per_second(uint64_t total, unsigned batch);

/// Round trip of a value bounced between two threads pinned to `cpu_a` and `cpu_b` through one atomic word each way,
/// both busy-polling. Returns nanoseconds per round trip, or a negative errno.
double cb_atomic_pingpong_ns(int cpu_a, int cpu_b, uint64_t round_trips);

/// Nanoseconds per call of an opaque empty function, called `count` times in a loop.
double cb_direct_call_ns(uint64_t count);

/// Overwrites `count` blocks of `block` bytes at the start of `path` (opened O_DIRECT), one at a time: a write, then
/// an fdatasync, each submitted through io_uring and waited for. Writes each operation's nanoseconds (write submitted
/// to fdatasync completed) into `out`. Returns 0 or a negative errno.
int cb_write_fdatasync(const char *path, unsigned block, unsigned count, uint64_t *out);

#endif
