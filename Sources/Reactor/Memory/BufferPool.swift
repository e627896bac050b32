import CSupport
import Platform

/// A shard's bounded pool of aligned I/O buffers: one allocation on the shard's NUMA node (hugepage-backed where the
/// system has hugepages), carved into `bufferCount` buffers of `bufferSizeBytes`, each registered with the shard's
/// ring for fixed-buffer I/O. Owned by the shard's thread; a buffer goes back to the pool when its lease ends.
public final class BufferPool {
    public let bufferSizeBytes: Int
    public let bufferCount: Int
    /// What backs the pool: explicit hugepages, transparent hugepages, or ordinary pages.
    public let memoryKind: MemoryKind
    public let numaNode: Int
    /// Whether the kernel accepted the buffers for fixed-buffer I/O.
    public let registered: Bool

    private var base: UnsafeMutableRawPointer?
    private let mappedBytes: Int
    private var free: [Int32]
    private var waiters: [(id: UInt64, continuation: UnsafeContinuation<Void, Never>)] = []
    private var nextWaiterID: UInt64 = 0
    /// Set when the shard stops: no new leases; the memory is freed once the last lease comes back.
    private var retired = false
    unowned(unsafe) let shard: Shard

    public enum MemoryKind: String, Sendable {
        case hugetlb, transparentHugepages = "transparent-hugepages", pages
    }

    init(shard: Shard) throws(IOError) {
        self.shard = shard
        let configuration = shard.configuration
        bufferSizeBytes = configuration.bufferSizeBytes
        bufferCount = configuration.bufferCount
        numaNode = shard.numaNode
        free = (0..<Int32(bufferCount)).reversed().map { $0 }
        guard bufferCount > 0 else {
            base = nil
            mappedBytes = 0
            memoryKind = .pages
            registered = false
            return
        }
        var kind = CS_MEMORY_PAGES
        var mapped = 0
        guard let memory = cs_alloc_aligned(bufferCount * bufferSizeBytes, Int32(numaNode),
                                            configuration.useHugePages, &kind, &mapped)
        else {
            throw IOError(.allocate, .system(errno: 12), target: "buffer pool of shard \(shard.index)")
        }
        base = memory
        mappedBytes = mapped
        switch kind {
        case CS_MEMORY_HUGETLB: memoryKind = .hugetlb
        case CS_MEMORY_TRANSPARENT_HUGE: memoryKind = .transparentHugepages
        default: memoryKind = .pages
        }
        let (count, size) = (bufferCount, bufferSizeBytes)
        var bases: [UnsafeMutableRawPointer?] = (0..<count).map { memory + $0 * size }
        let rc = bases.withUnsafeMutableBufferPointer { pointers in
            cs_ring_register_buffers(shard.ring, pointers.baseAddress, size, UInt32(count))
        }
        // Without registration (a locked-memory limit, say) the buffers still work with plain reads and writes.
        registered = rc == 0
        if rc != 0 {
            shard.logger.warning("fixed buffers not registered; using plain I/O", metadata: ["errno": "\(-rc)"])
        }
    }

    /// Called by the shard as it stops, with no request in flight: unregisters the buffers, wakes every waiter (it
    /// then gets `.shutdown`), and frees the memory now, or when the last outstanding lease comes back.
    func retire() {
        if registered, let ring = shard.ring { _ = cs_ring_unregister_buffers(ring) }
        retired = true
        let woken = waiters
        waiters.removeAll()
        for waiter in woken { waiter.continuation.resume() }
        if free.count == bufferCount { freeMemory() }
    }

    private func freeMemory() {
        guard let base else { return }
        let kind: cs_memory_kind
        switch memoryKind {
        case .hugetlb: kind = CS_MEMORY_HUGETLB
        case .transparentHugepages: kind = CS_MEMORY_TRANSPARENT_HUGE
        case .pages: kind = CS_MEMORY_PAGES
        }
        cs_free_aligned(base, mappedBytes, kind)
        self.base = nil
    }

    /// Buffers not leased right now.
    public var available: Int { free.count }

    /// A buffer, or nil when all are leased (or the shard has stopped).
    public func tryAcquire() -> PooledBuffer? {
        guard !retired, let base, let index = free.popLast() else { return nil }
        return PooledBuffer(pool: self, index: Int(index), base: base + Int(index) * bufferSizeBytes,
                            count: bufferSizeBytes)
    }

    /// A buffer, waiting for one to be returned when all are leased. Throws `.cancelled` if the task is cancelled
    /// while it waits, `.shutdown` once the shard stops.
    public func acquire() async throws(IOError) -> PooledBuffer {
        while true {
            if retired { throw IOError(.allocate, .shutdown, target: "buffer pool") }
            if let buffer = tryAcquire() { return buffer }
            if base == nil { throw IOError(.allocate, .invalidArgument("the pool has no buffers")) }
            if Task.isCancelled { throw IOError(.allocate, .cancelled, target: "buffer pool") }
            nextWaiterID += 1
            let id = nextWaiterID
            let shard = self.shard
            let pool = ShardBound(self)
            await withTaskCancellationHandler {
                await withUnsafeContinuation { continuation in
                    // Checked again here: the await may have hopped while a buffer came back.
                    if !free.isEmpty || retired || Task.isCancelled {
                        continuation.resume()
                    } else {
                        waiters.append((id, continuation))
                    }
                }
            } onCancel: {
                shard.post { pool.value.resumeWaiter(id) }
            }
        }
    }

    private func resumeWaiter(_ id: UInt64) {
        guard let position = waiters.firstIndex(where: { $0.id == id }) else { return }
        waiters.remove(at: position).continuation.resume()
    }

    fileprivate func giveBack(_ index: Int) {
        free.append(Int32(index))
        assert(free.count <= bufferCount)
        if retired {
            if free.count == bufferCount { freeMemory() }
            return
        }
        if !waiters.isEmpty { waiters.removeFirst().continuation.resume() }
    }
}

/// A lease on one pooled buffer: 4 KiB aligned, `count` bytes, returned to its pool when the lease ends. It cannot
/// be copied, and (not being Sendable) it stays on the shard whose pool lent it.
public struct PooledBuffer: ~Copyable {
    /// Strong: a lease keeps its pool (and so its memory) alive, even past the shard's end.
    let pool: BufferPool
    /// The index of the buffer in the ring's fixed-buffer table.
    public let index: Int
    public let base: UnsafeMutableRawPointer
    public let count: Int

    fileprivate init(pool: BufferPool, index: Int, base: UnsafeMutableRawPointer, count: Int) {
        self.pool = pool
        self.index = index
        self.base = base
        self.count = count
    }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: count) }

    deinit { pool.giveBack(index) }
}

@available(*, unavailable)
extension PooledBuffer: Sendable {}
