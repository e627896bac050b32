// The one C file that includes liburing.h. See CSupport.h for the contract of each function.
#include "CSupport.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <hugetlbfs.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <numa.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

struct cs_ring {
    struct io_uring ring;
};

// MARK: - Ring

static int try_create(struct cs_ring *r, unsigned entries, unsigned cq_entries, unsigned flags) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = flags | IORING_SETUP_CQSIZE;
    p.cq_entries = cq_entries;
    return io_uring_queue_init_params(entries, &r->ring, &p);
}

cs_ring *cs_ring_create(unsigned entries, unsigned cq_entries, unsigned *granted, int *error) {
    struct cs_ring *r = calloc(1, sizeof *r);
    if (!r) {
        *error = -ENOMEM;
        return NULL;
    }
    if (cq_entries < entries) cq_entries = entries * 2;
    int rc = try_create(r, entries, cq_entries, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
    if (rc == 0) {
        *granted = CS_RING_SINGLE_ISSUER | CS_RING_DEFER_TASKRUN;
        return r;
    }
    rc = try_create(r, entries, cq_entries, IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
    if (rc == 0) {
        *granted = CS_RING_COOP_TASKRUN;
        return r;
    }
    rc = try_create(r, entries, cq_entries, 0);
    if (rc == 0) {
        *granted = 0;
        return r;
    }
    free(r);
    *error = rc;
    return NULL;
}

void cs_ring_destroy(cs_ring *ring) {
    if (!ring) return;
    io_uring_queue_exit(&ring->ring);
    free(ring);
}

int cs_ring_fd(const cs_ring *ring) { return ring->ring.ring_fd; }
unsigned cs_ring_sq_space(const cs_ring *ring) { return io_uring_sq_space_left(&ring->ring); }
unsigned cs_ring_sq_ready(const cs_ring *ring) { return io_uring_sq_ready(&ring->ring); }
int cs_ring_submit(cs_ring *ring) { return io_uring_submit(&ring->ring); }
int cs_ring_submit_and_get_events(cs_ring *ring) { return io_uring_submit_and_get_events(&ring->ring); }

int cs_ring_submit_and_wait(cs_ring *ring, unsigned wait_nr, int64_t timeout_ns) {
    if (timeout_ns < 0) return io_uring_submit_and_wait(&ring->ring, wait_nr);
    struct __kernel_timespec ts = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
    struct io_uring_cqe *cqe = NULL;
    return io_uring_submit_and_wait_timeout(&ring->ring, &cqe, wait_nr, &ts, NULL);
}

unsigned cs_ring_reap(cs_ring *ring, cs_cqe *out, unsigned max) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring->ring, head, cqe) {
        if (n == max) break;
        out[n].user_data = cqe->user_data;
        out[n].res = cqe->res;
        out[n].flags = cqe->flags;
        n++;
    }
    if (n) io_uring_cq_advance(&ring->ring, n);
    return n;
}

int cs_ring_register_buffers(cs_ring *ring, void *const *bases, size_t length, unsigned count) {
    struct iovec *iov = calloc(count, sizeof *iov);
    if (!iov) return -ENOMEM;
    for (unsigned i = 0; i < count; i++) {
        iov[i].iov_base = bases[i];
        iov[i].iov_len = length;
    }
    int rc = io_uring_register_buffers(&ring->ring, iov, count);
    free(iov);
    return rc;
}

int cs_ring_unregister_buffers(cs_ring *ring) { return io_uring_unregister_buffers(&ring->ring); }

// MARK: - Submission helpers

#define GET_SQE(ring, sqe)                                 \
    struct io_uring_sqe *sqe = io_uring_get_sqe(&(ring)->ring); \
    if (!sqe) return -EBUSY

int cs_prep_nop(cs_ring *ring, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_read(cs_ring *ring, int fd, void *buf, unsigned len, uint64_t offset, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_read(sqe, fd, buf, len, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_write(cs_ring *ring, int fd, const void *buf, unsigned len, uint64_t offset, int rw_flags,
                  uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_write(sqe, fd, buf, len, offset);
    sqe->rw_flags = rw_flags;
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_read_fixed(cs_ring *ring, int fd, void *buf, unsigned len, uint64_t offset, int buf_index,
                       uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_read_fixed(sqe, fd, buf, len, offset, buf_index);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_write_fixed(cs_ring *ring, int fd, const void *buf, unsigned len, uint64_t offset, int buf_index,
                        int rw_flags, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_write_fixed(sqe, fd, buf, len, offset, buf_index);
    sqe->rw_flags = rw_flags;
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_fsync(cs_ring *ring, int fd, bool datasync, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_openat(cs_ring *ring, int dirfd, const char *path, int flags, unsigned mode, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_openat(sqe, dirfd, path, flags, mode);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_renameat(cs_ring *ring, const char *old_path, const char *new_path, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_renameat(sqe, AT_FDCWD, old_path, AT_FDCWD, new_path, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_close(cs_ring *ring, int fd, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_fallocate(cs_ring *ring, int fd, int mode, uint64_t offset, uint64_t length, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_fallocate(sqe, fd, mode, offset, length);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_socket(cs_ring *ring, int domain, int type, int protocol, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_socket(sqe, domain, type, protocol, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_accept_multishot(cs_ring *ring, int fd, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_connect(cs_ring *ring, int fd, const void *addr, unsigned addr_len, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)addr, addr_len);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_recv(cs_ring *ring, int fd, void *buf, unsigned len, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_recv(sqe, fd, buf, len, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_send(cs_ring *ring, int fd, const void *buf, unsigned len, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_timeout(cs_ring *ring, void *ts_storage, int64_t nanoseconds, uint64_t user_data) {
    GET_SQE(ring, sqe);
    struct __kernel_timespec *ts = ts_storage;
    if (nanoseconds < 0) nanoseconds = 0;
    ts->tv_sec = nanoseconds / 1000000000;
    ts->tv_nsec = nanoseconds % 1000000000;
    io_uring_prep_timeout(sqe, ts, 0, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_cancel(cs_ring *ring, uint64_t target_user_data, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_cancel64(sqe, target_user_data, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_cancel_fd(cs_ring *ring, int fd, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_msg_ring(cs_ring *ring, int target_ring_fd, int32_t res, uint64_t target_user_data,
                     uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_msg_ring(sqe, target_ring_fd, (unsigned)res, target_user_data, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_prep_eventfd_read(cs_ring *ring, int fd, uint64_t *counter, uint64_t user_data) {
    GET_SQE(ring, sqe);
    io_uring_prep_read(sqe, fd, counter, sizeof *counter, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_rwf_dsync(void) { return RWF_DSYNC; }
int cs_o_direct(void) { return O_DIRECT; }
bool cs_cqe_has_more(uint32_t flags) { return (flags & IORING_CQE_F_MORE) != 0; }

// MARK: - Eventfd

int cs_eventfd_create(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int cs_eventfd_signal(int fd) {
    uint64_t one = 1;
    ssize_t n = write(fd, &one, sizeof one);
    // EAGAIN means the counter is already huge: the target will wake anyway.
    if (n < 0 && errno != EAGAIN) return -errno;
    return 0;
}

// MARK: - Sockets

int cs_sockaddr_ipv4(const char *host, uint16_t port, void *storage) {
    struct sockaddr_in *sa = storage;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(port);
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) return -EINVAL;
    return (int)sizeof *sa;
}

int cs_tcp_listen(const char *host, uint16_t port, bool reuse_port, int backlog, uint16_t *bound_port) {
    struct sockaddr_in sa;
    int rc = cs_sockaddr_ipv4(host, port, &sa);
    if (rc < 0) return rc;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) goto fail;
    if (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) goto fail;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) goto fail;
    if (listen(fd, backlog) < 0) goto fail;
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0) goto fail;
    *bound_port = ntohs(sa.sin_port);
    return fd;
fail:
    rc = -errno;
    close(fd);
    return rc;
}

int cs_tcp_nodelay(int fd) {
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ? -errno : 0;
}

// MARK: - CPUs, NUMA, memory

int cs_pin_current_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) < 0 ? -errno : 0;
}

int cs_set_current_thread_cpus(const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++)
        if (cpus[i] >= 0 && cpus[i] < CPU_SETSIZE) CPU_SET(cpus[i], &set);
    return sched_setaffinity(0, sizeof set, &set) < 0 ? -errno : 0;
}

int cs_allowed_cpus(int *out, int max) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) < 0) return -errno;
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && n < max; cpu++)
        if (CPU_ISSET(cpu, &set)) out[n++] = cpu;
    return n;
}

bool cs_numa_available(void) { return numa_available() >= 0; }

int cs_numa_node_of_cpu(int cpu) {
    if (numa_available() < 0) return 0;
    int node = numa_node_of_cpu(cpu);
    return node < 0 ? 0 : node;
}

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

static size_t free_huge_pages_of_size(long page_size) {
    char path[128];
    snprintf(path, sizeof path, "/sys/kernel/mm/hugepages/hugepages-%ldkB/free_hugepages", page_size / 1024);
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    unsigned long n = 0;
    if (fscanf(f, "%lu", &n) != 1) n = 0;
    fclose(f);
    return n;
}

void *cs_alloc_aligned(size_t size, int node, bool try_huge, cs_memory_kind *kind, size_t *mapped_size) {
    const size_t huge = 2u << 20;
    if (try_huge) {
        long hp = gethugepagesize();
        // Ask libhugetlbfs only when the pool has enough free pages: on failure it prints warnings to stderr.
        if (hp > 0 && free_huge_pages_of_size(hp) * (size_t)hp >= round_up(size, (size_t)hp)) {
            size_t want = round_up(size, (size_t)hp);
            // GHP_DEFAULT fails cleanly when the hugepage pool is empty.
            void *p = get_huge_pages(want, GHP_DEFAULT);
            if (p) {
                if (numa_available() >= 0) numa_tonode_memory(p, want, node);
                *kind = CS_MEMORY_HUGETLB;
                *mapped_size = want;
                return p;
            }
        }
    }
    size_t want = round_up(size, try_huge ? huge : 4096);
    void *p = mmap(NULL, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    if (numa_available() >= 0) numa_tonode_memory(p, want, node);
    *kind = CS_MEMORY_PAGES;
    if (try_huge && madvise(p, want, MADV_HUGEPAGE) == 0) *kind = CS_MEMORY_TRANSPARENT_HUGE;
    *mapped_size = want;
    return p;
}

void cs_free_aligned(void *pointer, size_t mapped_size, cs_memory_kind kind) {
    if (!pointer) return;
    if (kind == CS_MEMORY_HUGETLB)
        free_huge_pages(pointer);
    else
        munmap(pointer, mapped_size);
}

// MARK: - Time and threads

uint64_t cs_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__thread int cs_current_shard_value __attribute__((tls_model("initial-exec"))) = -1;
__thread void *cs_current_shard_object_value __attribute__((tls_model("initial-exec"))) = NULL;
void cs_set_current_shard(int shard, void *object) {
    cs_current_shard_value = shard;
    cs_current_shard_object_value = object;
}

int64_t cs_file_size(const char *path) {
    struct stat info;
    if (stat(path, &info) != 0) return -errno;
    return (int64_t)info.st_size;
}

int cs_open_fd_count(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -errno;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1;  // the directory stream's own descriptor
}

int cs_set_thread_name(unsigned long thread, const char *name) { return -pthread_setname_np((pthread_t)thread, name); }

void cs_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

// MARK: - Global executor watch

typedef void (*swift_enqueue_original)(void *job) __attribute__((swiftcall));
typedef void (*swift_enqueue_hook)(void *job, swift_enqueue_original original) __attribute__((swiftcall));
extern swift_enqueue_hook swift_task_enqueueGlobal_hook;

// Counted per thread: a test reads the count of the shard thread it runs on, unaffected by other reactors.
static __thread uint64_t global_enqueues_from_this_shard __attribute__((tls_model("initial-exec")));

static __thread int simulation_thread __attribute__((tls_model("initial-exec")));
static __thread uint64_t simulation_stray_jobs __attribute__((tls_model("initial-exec")));

__attribute__((swiftcall)) static void watch_global_enqueue(void *job, swift_enqueue_original original) {
    if (simulation_thread) {
        simulation_stray_jobs++;
        return;
    }
    if (cs_current_shard_value >= 0) global_enqueues_from_this_shard++;
    original(job);
}

void cs_install_global_enqueue_watch(void) { swift_task_enqueueGlobal_hook = watch_global_enqueue; }

void cs_become_simulation_thread(void) {
    simulation_thread = 1;
    swift_task_enqueueGlobal_hook = watch_global_enqueue;
}

uint64_t cs_simulation_stray_jobs(void) { return simulation_stray_jobs; }

uint64_t cs_global_enqueues_from_this_shard(void) { return global_enqueues_from_this_shard; }

// MARK: - XXH3-64

uint64_t cs_xxh3_64(const void *data, size_t length, uint64_t seed) { return XXH3_64bits_withSeed(data, length, seed); }

// cs_xxh3_state is never defined: it is XXH3_state_t under another name, allocated by libxxhash.
cs_xxh3_state *cs_xxh3_create(uint64_t seed) {
    XXH3_state_t *s = XXH3_createState();
    if (s) XXH3_64bits_reset_withSeed(s, seed);
    return (cs_xxh3_state *)s;
}

void cs_xxh3_update(cs_xxh3_state *state, const void *data, size_t length) {
    XXH3_64bits_update((XXH3_state_t *)state, data, length);
}

uint64_t cs_xxh3_digest(const cs_xxh3_state *state) { return XXH3_64bits_digest((const XXH3_state_t *)state); }
void cs_xxh3_reset(cs_xxh3_state *state, uint64_t seed) { XXH3_64bits_reset_withSeed((XXH3_state_t *)state, seed); }
void cs_xxh3_free(cs_xxh3_state *state) { XXH3_freeState((XXH3_state_t *)state); }
