import Synchronization

/// A bounded, lock-free queue with exactly one producer thread and one consumer thread: the channel from one shard to
/// another. The producer and consumer indices live on separate cache lines, and each side caches the other's index
/// so that a push or pop touches the shared line only when its cached view says the queue is full or empty.
final class SPSCChannel<Element>: @unchecked Sendable {
    let capacity: Int
    private let mask: Int
    private let storage: UnsafeMutablePointer<Element>

    // The object is only 16-byte aligned, so each side's pair of words gets a full cache line of padding on both
    // sides: the producer's writes never invalidate the line the consumer polls, nor the read-only fields above.
    private let padding0: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)
    // Producer's line.
    private let tail = Atomic<Int>(0)
    private var cachedHead = 0
    private let padding1: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)
    // Consumer's line.
    private let head = Atomic<Int>(0)
    private var cachedTail = 0
    private let padding2: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)

    init(capacity: Int) {
        precondition(capacity >= 2 && capacity & (capacity - 1) == 0, "capacity must be a power of two")
        self.capacity = capacity
        self.mask = capacity - 1
        self.storage = .allocate(capacity: capacity)
    }

    deinit {
        var h = head.load(ordering: .relaxed)
        let t = tail.load(ordering: .relaxed)
        while h != t {
            (storage + (h & mask)).deinitialize(count: 1)
            h += 1
        }
        storage.deallocate()
    }

    /// Producer only. False when the channel is full; the caller still holds the element and must keep it.
    @inline(__always)
    func push(_ element: Element) -> Bool {
        let t = tail.load(ordering: .relaxed)
        if t &- cachedHead == capacity {
            cachedHead = head.load(ordering: .acquiring)
            if t &- cachedHead == capacity { return false }
        }
        (storage + (t & mask)).initialize(to: element)
        tail.store(t &+ 1, ordering: .releasing)
        return true
    }

    /// Producer only: whether a push would fail now.
    func isFull() -> Bool {
        let t = tail.load(ordering: .relaxed)
        if t &- cachedHead < capacity { return false }
        cachedHead = head.load(ordering: .acquiring)
        return t &- cachedHead == capacity
    }

    /// Consumer only. Hands at most `limit` elements to `body`, in order; returns how many.
    @inline(__always)
    func drain(limit: Int, _ body: (consuming Element) -> Void) -> Int {
        let h = head.load(ordering: .relaxed)
        if h == cachedTail {
            let t = tail.load(ordering: .acquiring)
            if h == t { return 0 }
            cachedTail = t
        }
        let n = min(limit, cachedTail &- h)
        for i in 0..<n {
            body((storage + ((h &+ i) & mask)).move())
        }
        head.store(h &+ n, ordering: .releasing)
        return n
    }

    /// Consumer only, before it sleeps: whether anything is waiting, read with sequential consistency so that it
    /// pairs with the producer's fence (see `Shard.sleep`).
    func hasPending() -> Bool {
        head.load(ordering: .relaxed) != tail.load(ordering: .sequentiallyConsistent)
    }
}
