#include "CBaselines.h"

#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <xxhash.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double cb_nop_ops_per_second(uint64_t total, unsigned batch) {
    struct io_uring ring;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    if (io_uring_queue_init_params(batch * 2, &ring, &p) < 0) {
        memset(&p, 0, sizeof p);
        int rc = io_uring_queue_init_params(batch * 2, &ring, &p);
        if (rc < 0) return rc;
    }
    uint64_t done = 0, start = now_ns();
    while (done < total) {
        for (unsigned i = 0; i < batch; i++) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            io_uring_prep_nop(sqe);
            io_uring_sqe_set_data64(sqe, i);
        }
        io_uring_submit_and_wait(&ring, batch);
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&ring, head, cqe) n++;
        io_uring_cq_advance(&ring, n);
        done += n;
    }
    double seconds = (double)(now_ns() - start) / 1e9;
    io_uring_queue_exit(&ring);
    return (double)done / seconds;
}

struct pingpong {
    _Alignas(64) _Atomic uint64_t ping;
    _Alignas(64) _Atomic uint64_t pong;
    uint64_t round_trips;
    int cpu;
};

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static void *ponger(void *arg) {
    struct pingpong *pp = arg;
    pin(pp->cpu);
    for (uint64_t i = 1; i <= pp->round_trips; i++) {
        while (atomic_load_explicit(&pp->ping, memory_order_acquire) != i) __builtin_ia32_pause();
        atomic_store_explicit(&pp->pong, i, memory_order_release);
    }
    return NULL;
}

double cb_atomic_pingpong_ns(int cpu_a, int cpu_b, uint64_t round_trips) {
    static struct pingpong pp;
    atomic_store(&pp.ping, 0);
    atomic_store(&pp.pong, 0);
    pp.round_trips = round_trips;
    pp.cpu = cpu_b;
    pthread_t t;
    if (pthread_create(&t, NULL, ponger, &pp) != 0) return -EAGAIN;
    cpu_set_t old;
    sched_getaffinity(0, sizeof old, &old);
    pin(cpu_a);
    uint64_t start = now_ns();
    for (uint64_t i = 1; i <= round_trips; i++) {
        atomic_store_explicit(&pp.ping, i, memory_order_release);
        while (atomic_load_explicit(&pp.pong, memory_order_acquire) != i) __builtin_ia32_pause();
    }
    uint64_t elapsed = now_ns() - start;
    pthread_join(t, NULL);
    sched_setaffinity(0, sizeof old, &old);
    return (double)elapsed / (double)round_trips;
}

__attribute__((noinline)) static void opaque_empty(volatile uint64_t *sink) { *sink += 1; }

double cb_direct_call_ns(uint64_t count) {
    volatile uint64_t sink = 0;
    uint64_t start = now_ns();
    for (uint64_t i = 0; i < count; i++) opaque_empty(&sink);
    return (double)(now_ns() - start) / (double)count;
}

static int wait_one(struct io_uring *ring) {
    struct io_uring_cqe *cqe;
    int rc = io_uring_submit_and_wait(ring, 1);
    if (rc < 0) return rc;
    rc = io_uring_peek_cqe(ring, &cqe);
    if (rc < 0) return rc;
    int res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    return res;
}

int cb_write_fdatasync(const char *path, unsigned block, unsigned count, uint64_t *out) {
    int fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
    if (fd < 0) return -errno;
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, block) != 0) {
        close(fd);
        return -ENOMEM;
    }
    memset(buf, 0x3c, block);
    struct io_uring ring;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int rc = io_uring_queue_init_params(8, &ring, &p);
    if (rc < 0) {
        memset(&p, 0, sizeof p);
        rc = io_uring_queue_init_params(8, &ring, &p);
    }
    if (rc < 0) goto done;
    for (unsigned i = 0; i < count && rc >= 0; i++) {
        uint64_t start = now_ns();
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        io_uring_prep_write(sqe, fd, buf, block, (uint64_t)i * block);
        rc = wait_one(&ring);
        if (rc < 0) break;
        sqe = io_uring_get_sqe(&ring);
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
        rc = wait_one(&ring);
        out[i] = now_ns() - start;
    }
    io_uring_queue_exit(&ring);
done:
    free(buf);
    close(fd);
    return rc < 0 ? rc : 0;
}

uint64_t cb_copy_and_hash(void *destination, const void *source, size_t length) {
    memcpy(destination, source, length);
    return XXH3_64bits(destination, length);
}

uint64_t cb_xxh3_repeat(const void *data, size_t length, uint64_t iterations) {
    uint64_t h = 0;
    for (uint64_t i = 0; i < iterations; i++) {
        h ^= XXH3_64bits(data, length);
        __asm__ volatile("" : : "r"(h) : "memory");
    }
    return h;
}

uint64_t cb_parse_frame_header_repeat(const void *header, uint64_t iterations) {
    const unsigned char *b = header;
    uint64_t acc = 0;
    for (uint64_t i = 0; i < iterations; i++) {
        __asm__ volatile("" : : "r"(b) : "memory");
        uint32_t length, header_length;
        uint16_t op;
        uint64_t request_id, checksum;
        memcpy(&length, b, 4);
        length = be32toh(length);
        if (length + 4 > (16u << 20) || length + 4 < 32) return 0;
        if (b[4] != 0xE5 || b[5] != 1 || (b[8] & ~7u) || b[9] || b[10] || b[11]) return 0;
        memcpy(&op, b + 6, 2);
        memcpy(&request_id, b + 12, 8);
        memcpy(&header_length, b + 20, 4);
        memcpy(&checksum, b + 24, 8);
        header_length = be32toh(header_length);
        if (header_length > (1u << 20) || header_length > length + 4 - 32) return 0;
        acc += be16toh(op) + be64toh(request_id) + header_length + be64toh(checksum) + b[8];
    }
    return acc;
}
