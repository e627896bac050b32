// Same-run baselines for es-perf, in plain C: what the hardware and liburing give without the reactor.
#ifndef CBASELINES_H
#define CBASELINES_H
#include <stddef.h>
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

/// Copies `length` bytes and hashes them with XXH3-64: the least work any batch encoder must do.
uint64_t cb_copy_and_hash(void *destination, const void *source, size_t length);

/// XXH3-64 of `length` bytes, `iterations` times; returns the last hash (so the loop is not optimised away).
uint64_t cb_xxh3_repeat(const void *data, size_t length, uint64_t iterations);

/// Parses the 32-byte fixed part of a frame (big-endian fields, see docs/protocol.md) `iterations` times, checking
/// magic, version, flags and bounds as the Swift decoder does; returns a value derived from the fields.
uint64_t cb_parse_frame_header_repeat(const void *header, uint64_t iterations);

#endif
