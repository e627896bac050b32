// CSupport: the thin C shim under the reactor.
//
// It wraps liburing, libnuma, libhugetlbfs and libxxhash and holds no policy: every decision (what to submit, when to
// sleep, how many buffers) is made in Swift. liburing.h is included only from CSupport.c, because it redefines
// feature macros that break debug builds of any Swift module importing it; Swift sees an opaque `cs_ring`.
//
// Conventions: functions that can fail return a negative errno (never set errno as their only signal).
#ifndef CSUPPORT_H
#define CSUPPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// MARK: - Ring

typedef struct cs_ring cs_ring;

/// Setup flags a caller may ask for; `cs_ring_create` reports which it was granted.
enum {
    CS_RING_SINGLE_ISSUER = 1u << 0,  // IORING_SETUP_SINGLE_ISSUER
    CS_RING_DEFER_TASKRUN = 1u << 1,  // IORING_SETUP_DEFER_TASKRUN (needs SINGLE_ISSUER)
    CS_RING_COOP_TASKRUN = 1u << 2,   // IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG
};

/// One completion, copied out of the completion queue.
typedef struct cs_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
} cs_cqe;

/// Creates a ring with `entries` submission slots and `cq_entries` completion slots. Tries
/// SINGLE_ISSUER|DEFER_TASKRUN, then COOP_TASKRUN, then no flags; `*granted` receives the CS_RING_* flags the kernel
/// accepted. Returns NULL and sets `*error` (a negative errno) on failure.
cs_ring *cs_ring_create(unsigned entries, unsigned cq_entries, unsigned *granted, int *error);
void cs_ring_destroy(cs_ring *ring);
int cs_ring_fd(const cs_ring *ring);
/// Free submission slots.
unsigned cs_ring_sq_space(const cs_ring *ring);
/// SQEs prepared but not yet submitted.
unsigned cs_ring_sq_ready(const cs_ring *ring);

/// Submits what is prepared. Returns the number submitted or a negative errno.
int cs_ring_submit(cs_ring *ring);
/// Submits and runs deferred completion work without waiting (needed with DEFER_TASKRUN to see completions).
int cs_ring_submit_and_get_events(cs_ring *ring);
/// Submits and waits for at least `wait_nr` completions, or until `timeout_ns` passes (negative: no timeout).
/// Returns >= 0, or -ETIME on timeout, -EINTR when interrupted, or another negative errno.
int cs_ring_submit_and_wait(cs_ring *ring, unsigned wait_nr, int64_t timeout_ns);
/// Copies up to `max` completions into `out` and marks them seen. Returns the number copied.
unsigned cs_ring_reap(cs_ring *ring, cs_cqe *out, unsigned max);
/// Registers `count` buffers of `length` bytes each, starting at `bases[i]`, for fixed-buffer I/O.
int cs_ring_register_buffers(cs_ring *ring, void *const *bases, size_t length, unsigned count);
int cs_ring_unregister_buffers(cs_ring *ring);

// MARK: - Submission helpers
// Each prepares one SQE tagged with `user_data`; returns 0, or -EBUSY when the submission queue is full.

int cs_prep_nop(cs_ring *ring, uint64_t user_data);
int cs_prep_read(cs_ring *ring, int fd, void *buf, unsigned len, uint64_t offset, uint64_t user_data);
/// `rw_flags` may hold RWF_DSYNC (see `cs_rwf_dsync`).
int cs_prep_write(cs_ring *ring, int fd, const void *buf, unsigned len, uint64_t offset, int rw_flags,
                  uint64_t user_data);
int cs_prep_read_fixed(cs_ring *ring, int fd, void *buf, unsigned len, uint64_t offset, int buf_index,
                       uint64_t user_data);
int cs_prep_write_fixed(cs_ring *ring, int fd, const void *buf, unsigned len, uint64_t offset, int buf_index,
                        int rw_flags, uint64_t user_data);
int cs_prep_fsync(cs_ring *ring, int fd, bool datasync, uint64_t user_data);
/// `path` must stay valid until the SQE is submitted.
int cs_prep_openat(cs_ring *ring, int dirfd, const char *path, int flags, unsigned mode, uint64_t user_data);
/// Renames `old_path` to `new_path` (both relative to the working directory when not absolute).
int cs_prep_renameat(cs_ring *ring, const char *old_path, const char *new_path, uint64_t user_data);
int cs_prep_close(cs_ring *ring, int fd, uint64_t user_data);
int cs_prep_fallocate(cs_ring *ring, int fd, int mode, uint64_t offset, uint64_t length, uint64_t user_data);
int cs_prep_socket(cs_ring *ring, int domain, int type, int protocol, uint64_t user_data);
int cs_prep_accept_multishot(cs_ring *ring, int fd, uint64_t user_data);
/// `addr` must stay valid until the SQE completes.
int cs_prep_connect(cs_ring *ring, int fd, const void *addr, unsigned addr_len, uint64_t user_data);
int cs_prep_recv(cs_ring *ring, int fd, void *buf, unsigned len, uint64_t user_data);
/// Sends with MSG_NOSIGNAL: a closed peer gives -EPIPE, never SIGPIPE.
int cs_prep_send(cs_ring *ring, int fd, const void *buf, unsigned len, uint64_t user_data);
/// A relative timeout; `ts_storage` (16 bytes, 8-aligned) must stay valid until the SQE completes.
int cs_prep_timeout(cs_ring *ring, void *ts_storage, int64_t nanoseconds, uint64_t user_data);
/// Cancels the request tagged `target_user_data`.
int cs_prep_cancel(cs_ring *ring, uint64_t target_user_data, uint64_t user_data);
/// Cancels every request on descriptor `fd` (IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL).
int cs_prep_cancel_fd(cs_ring *ring, int fd, uint64_t user_data);
/// Posts a completion with `res` and `target_user_data` to another ring (IORING_OP_MSG_RING): a cross-ring wake-up.
int cs_prep_msg_ring(cs_ring *ring, int target_ring_fd, int32_t res, uint64_t target_user_data,
                     uint64_t user_data);
/// Reads 8 bytes from an eventfd into `counter`.
int cs_prep_eventfd_read(cs_ring *ring, int fd, uint64_t *counter, uint64_t user_data);

int cs_rwf_dsync(void);
int cs_o_direct(void);
bool cs_cqe_has_more(uint32_t flags);

// MARK: - Eventfd (a wake-up from any thread)

int cs_eventfd_create(void);
int cs_eventfd_signal(int fd);

// MARK: - Sockets (setup only; data moves through the ring)

/// A TCP listener bound to an IPv4 `host:port`, with SO_REUSEADDR and, when `reuse_port`, SO_REUSEPORT.
/// Port 0 picks one; `*bound_port` receives it. Returns the descriptor or a negative errno.
int cs_tcp_listen(const char *host, uint16_t port, bool reuse_port, int backlog, uint16_t *bound_port);
/// Fills `storage` (at least 16 bytes) with an IPv4 address; returns its length or a negative errno.
int cs_sockaddr_ipv4(const char *host, uint16_t port, void *storage);
int cs_tcp_nodelay(int fd);

// MARK: - CPUs, NUMA, memory

/// Pins the calling thread to `cpu`. Returns 0 or a negative errno.
int cs_pin_current_thread(int cpu);
/// Lets the calling thread run on any of `count` CPUs. Returns 0 or a negative errno.
int cs_set_current_thread_cpus(const int *cpus, int count);
/// Writes the CPUs this process may run on into `out` (at most `max`); returns how many.
int cs_allowed_cpus(int *out, int max);
/// The NUMA node of `cpu`, or 0 when the system has no NUMA information.
int cs_numa_node_of_cpu(int cpu);
bool cs_numa_available(void);

typedef enum cs_memory_kind {
    CS_MEMORY_HUGETLB = 1,          // explicit hugepages (libhugetlbfs)
    CS_MEMORY_TRANSPARENT_HUGE = 2, // anonymous mapping with MADV_HUGEPAGE
    CS_MEMORY_PAGES = 3,            // ordinary 4 KiB pages
} cs_memory_kind;

/// Allocates `size` bytes (rounded up to 2 MiB for hugepages, 4 KiB otherwise), 4 KiB aligned at least, placed on
/// `node` when NUMA is available. Tries explicit hugepages, then transparent hugepages, then pages; `*kind` says
/// which. `*mapped_size` receives the size to pass to `cs_free_aligned`. Returns NULL on failure.
void *cs_alloc_aligned(size_t size, int node, bool try_huge, cs_memory_kind *kind, size_t *mapped_size);
void cs_free_aligned(void *pointer, size_t mapped_size, cs_memory_kind kind);

// MARK: - Time and threads

uint64_t cs_monotonic_ns(void);
/// Which shard this thread runs (set by the reactor), or -1. Inline, with the initial-exec TLS model, because the
/// executor asks on every enqueue.
extern __thread int cs_current_shard_value __attribute__((tls_model("initial-exec")));
static inline int cs_current_shard(void) { return cs_current_shard_value; }
/// The shard object running this thread (an unretained pointer the reactor set), or NULL. Index alone is not an
/// identity: two reactors in one process both have a shard 0.
extern __thread void *cs_current_shard_object_value __attribute__((tls_model("initial-exec")));
static inline void *cs_current_shard_object(void) { return cs_current_shard_object_value; }
void cs_set_current_shard(int shard, void *object);
/// The size of the file at `path` (following links), or a negative errno.
int64_t cs_file_size(const char *path);
/// Number of open file descriptors of this process (entries in /proc/self/fd, minus the one used to count).
int cs_open_fd_count(void);
/// Names a thread (at most 15 characters are kept).
int cs_set_thread_name(unsigned long thread, const char *name);
/// A cheap spin-wait hint.
void cs_cpu_relax(void);

// MARK: - Global executor watch
// Counts jobs handed to Swift's global concurrent executor from a thread that runs a shard, per thread. The reactor
// must never do that; a test installs the watch and checks the count of each shard thread stays put.

void cs_install_global_enqueue_watch(void);
/// Jobs the calling shard thread has handed to the global executor since the watch was installed.
uint64_t cs_global_enqueues_from_this_shard(void);
/// Marks the calling thread as a simulator's (installing the watch): a job it hands to the global executor is then
/// never run (it would race the simulation) but counted, and the simulator fails the run.
void cs_become_simulation_thread(void);
/// Jobs the simulator's thread has handed to the global executor.
uint64_t cs_simulation_stray_jobs(void);

// MARK: - XXH3-64

uint64_t cs_xxh3_64(const void *data, size_t length, uint64_t seed);
typedef struct cs_xxh3_state cs_xxh3_state;
cs_xxh3_state *cs_xxh3_create(uint64_t seed);
void cs_xxh3_update(cs_xxh3_state *state, const void *data, size_t length);
uint64_t cs_xxh3_digest(const cs_xxh3_state *state);
void cs_xxh3_reset(cs_xxh3_state *state, uint64_t seed);
void cs_xxh3_free(cs_xxh3_state *state);

#ifdef __cplusplus
}
#endif
#endif
