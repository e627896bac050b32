import CSupport

/// Something that takes every completion of a multishot request (an accepting listener).
protocol MultishotHandler: AnyObject {
    /// `more` is false on the last completion of the request.
    func complete(result: Int32, more: Bool)
}

/// Who waits for a request's completion.
enum CompletionWaiter {
    case none
    case continuation(UnsafeContinuation<Int32, Never>)
    case callback((Int32) -> Void)
    case multishot(MultishotHandler)
}

/// The table of a shard's in-flight requests. A request's io_uring user data is `generation << 32 | slot`, so a
/// late or duplicate completion (or cancellation) for a slot that has since been reused is recognised and ignored.
/// Bounded: `capacity` is the shard's in-flight limit. Owned by the shard's thread.
final class CompletionTable {
    /// User data reserved for the shard's own wake-up read on its eventfd.
    static let wakeUserData: UInt64 = .max
    /// User data for requests whose completion nobody waits for (cancellations, message-ring sends).
    static let ignoredUserData: UInt64 = .max - 1
    /// Bytes of stable scratch memory per slot, for what the kernel reads until completion (timespec, sockaddr).
    static let scratchBytes = 32

    let capacity: Int
    private var waiters: [CompletionWaiter]
    private var generations: [UInt32]
    private var free: [Int32]
    let scratch: UnsafeMutableRawPointer
    private(set) var inFlight = 0

    init(capacity: Int) {
        precondition(capacity > 0 && capacity < Int(Int32.max))
        self.capacity = capacity
        waiters = Array(repeating: .none, count: capacity)
        generations = Array(repeating: 1, count: capacity)
        free = (0..<Int32(capacity)).reversed().map { $0 }
        scratch = .allocate(byteCount: capacity * Self.scratchBytes, alignment: 16)
        scratch.initializeMemory(as: UInt8.self, repeating: 0, count: capacity * Self.scratchBytes)
    }

    deinit { scratch.deallocate() }

    /// A free slot's user data, or nil when `capacity` requests are already in flight.
    @inline(__always)
    func acquire() -> UInt64? {
        guard let slot = free.popLast() else { return nil }
        inFlight += 1
        return UInt64(generations[Int(slot)]) << 32 | UInt64(UInt32(slot))
    }

    @inline(__always)
    func scratch(for userData: UInt64) -> UnsafeMutableRawPointer {
        scratch + Int(UInt32(truncatingIfNeeded: userData)) * Self.scratchBytes
    }

    @inline(__always)
    func setWaiter(_ userData: UInt64, _ waiter: CompletionWaiter) {
        let slot = Int(UInt32(truncatingIfNeeded: userData))
        assert(generations[slot] == UInt32(userData >> 32), "waiter set on a stale slot")
        waiters[slot] = waiter
    }

    /// Whether `userData` names a request still in flight.
    func isLive(_ userData: UInt64) -> Bool {
        let slot = Int(UInt32(truncatingIfNeeded: userData))
        return slot < capacity && generations[slot] == UInt32(userData >> 32)
    }

    /// Gives a slot back without a completion (its request could not be prepared).
    func release(_ userData: UInt64) {
        let slot = Int(UInt32(truncatingIfNeeded: userData))
        precondition(isLive(userData), "release of a slot not in flight")
        waiters[slot] = .none
        generations[slot] &+= 1
        if generations[slot] == 0 { generations[slot] = 1 }
        free.append(Int32(slot))
        inFlight -= 1
    }

    /// Delivers one completion to its waiter. Returns false for a stale or unknown user data.
    @inline(__always)
    func complete(userData: UInt64, result: Int32, flags: UInt32) -> Bool {
        let slot = Int(UInt32(truncatingIfNeeded: userData))
        guard slot < capacity, generations[slot] == UInt32(userData >> 32) else { return false }
        switch waiters[slot] {
        case .continuation(let continuation):
            release(userData)
            continuation.resume(returning: result)
        case .callback(let callback):
            release(userData)
            callback(result)
        case .multishot(let handler):
            let more = cs_cqe_has_more(flags)
            if !more { release(userData) }
            handler.complete(result: result, more: more)
        case .none:
            release(userData)
        }
        return true
    }

    /// User data of every request in flight (for cancelling them all at shutdown).
    func liveUserData() -> [UInt64] {
        var live: [UInt64] = []
        let freeSet = Set(free)
        for slot in 0..<capacity where !freeSet.contains(Int32(slot)) {
            live.append(UInt64(generations[slot]) << 32 | UInt64(slot))
        }
        return live
    }
}
