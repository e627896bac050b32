/// A shard's local first-in first-out queue of jobs. Only the owning thread touches it; it grows by doubling and
/// never shrinks, so once warm a push or pop allocates nothing.
struct JobQueue: ~Copyable {
    private var storage: UnsafeMutablePointer<UnownedJob>
    private var capacity: Int
    private var head = 0
    private(set) var count = 0

    init(initialCapacity: Int = 1024) {
        precondition(initialCapacity > 0 && initialCapacity & (initialCapacity - 1) == 0)
        capacity = initialCapacity
        storage = .allocate(capacity: initialCapacity)
    }

    deinit { storage.deallocate() }

    var isEmpty: Bool { count == 0 }

    @inline(__always)
    mutating func push(_ job: UnownedJob) {
        if count == capacity { grow() }
        (storage + ((head &+ count) & (capacity &- 1))).initialize(to: job)
        count &+= 1
    }

    @inline(__always)
    mutating func pop() -> UnownedJob? {
        guard count > 0 else { return nil }
        let job = (storage + head).move()
        head = (head &+ 1) & (capacity &- 1)
        count &-= 1
        return job
    }

    private mutating func grow() {
        let bigger = UnsafeMutablePointer<UnownedJob>.allocate(capacity: capacity * 2)
        for i in 0..<count {
            (bigger + i).initialize(to: (storage + ((head + i) & (capacity - 1))).move())
        }
        storage.deallocate()
        storage = bigger
        capacity *= 2
        head = 0
    }
}
