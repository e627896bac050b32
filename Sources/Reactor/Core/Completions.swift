import CSupport

#if canImport(Glibc)
import Glibc
#endif

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
    /// Held weakly: a listener dropped without `close()` is freed, and its late completions are cleaned up here.
    case multishot(WeakMultishotHandler)
}

/// A class, so that the waiter enum stays a plain pointer to move (a weak reference stored inline in the enum made
/// every move of a waiter go through value witnesses).
final class WeakMultishotHandler {
    weak var handler: MultishotHandler?
    init(handler: MultishotHandler) { self.handler = handler }
}

/// The table of a shard's in-flight requests. A request's io_uring user data is `generation << 32 | slot`, so a
/// late or duplicate completion (or cancellation) for a slot that has since been reused is recognised and ignored.
/// Bounded: `capacity` is the shard's in-flight limit. Owned by the shard's thread; its storage is allocated once, so
/// starting and completing a request allocates nothing.
final class CompletionTable {
    // UInt64.max itself is liburing's LIBURING_UDATA_TIMEOUT, which its wait calls consume silently.
    /// User data reserved for the shard's own wake-up read on its eventfd.
    static let wakeUserData: UInt64 = .max - 2
    /// User data for requests whose completion nobody waits for (cancellations, message-ring sends).
    static let ignoredUserData: UInt64 = .max - 1
    /// Bytes of stable scratch memory per slot, for what the kernel reads until completion (timespec, sockaddr).
    static let scratchBytes = 32

    private struct Slot {
        var generation: UInt32 = 1
        var live = false
        /// See `offloadedInFlight`.
        var offloaded = false
        var waiter: CompletionWaiter = .none
    }

    let capacity: Int
    private let slots: UnsafeMutablePointer<Slot>
    /// A stack of free slot numbers; `freeCount` of them are valid.
    private let freeSlots: UnsafeMutablePointer<Int32>
    private var freeCount: Int
    let scratch: UnsafeMutableRawPointer
    private(set) var inFlight = 0
    /// Requests in flight that the kernel hands to its io-wq worker threads (fsync, fallocate, open, close,
    /// O_DSYNC writes). The worker shares the shard's CPU, so a shard waiting only for these must sleep, not spin.
    private(set) var offloadedInFlight = 0

    init(capacity: Int) {
        precondition(capacity > 0 && capacity < Int(Int32.max))
        self.capacity = capacity
        slots = .allocate(capacity: capacity)
        slots.initialize(repeating: Slot(), count: capacity)
        freeSlots = .allocate(capacity: capacity)
        for i in 0..<capacity { freeSlots[i] = Int32(capacity - 1 - i) }
        freeCount = capacity
        scratch = .allocate(byteCount: capacity * Self.scratchBytes, alignment: 16)
        scratch.initializeMemory(as: UInt8.self, repeating: 0, count: capacity * Self.scratchBytes)
    }

    deinit {
        slots.deinitialize(count: capacity)
        slots.deallocate()
        freeSlots.deallocate()
        scratch.deallocate()
    }

    /// A free slot's user data, or nil when `capacity` requests are already in flight.
    @inline(__always)
    func acquire(offloaded: Bool = false) -> UInt64? {
        guard freeCount > 0 else { return nil }
        freeCount -= 1
        let slot = Int(freeSlots[freeCount])
        assert(!slots[slot].live)
        slots[slot].live = true
        slots[slot].offloaded = offloaded
        inFlight += 1
        if offloaded { offloadedInFlight += 1 }
        return UInt64(slots[slot].generation) << 32 | UInt64(UInt32(slot))
    }

    @inline(__always)
    func scratch(for userData: UInt64) -> UnsafeMutableRawPointer {
        scratch + Int(UInt32(truncatingIfNeeded: userData)) * Self.scratchBytes
    }

    @inline(__always)
    func setWaiter(_ userData: UInt64, _ waiter: CompletionWaiter) {
        assert(isLive(userData), "waiter set on a stale slot")
        slots[Int(UInt32(truncatingIfNeeded: userData))].waiter = waiter
    }

    /// Whether `userData` names a request still in flight.
    @inline(__always)
    func isLive(_ userData: UInt64) -> Bool {
        let slot = Int(UInt32(truncatingIfNeeded: userData))
        return slot < capacity && slots[slot].live && slots[slot].generation == UInt32(truncatingIfNeeded: userData >> 32)
    }

    /// Gives a slot back; its waiter is dropped.
    @inline(__always)
    func release(_ userData: UInt64) {
        precondition(isLive(userData), "release of a slot not in flight")
        let slot = Int(UInt32(truncatingIfNeeded: userData))
        slots[slot].waiter = .none
        slots[slot].live = false
        if slots[slot].offloaded { offloadedInFlight -= 1 }
        slots[slot].generation &+= 1
        if slots[slot].generation == 0 { slots[slot].generation = 1 }
        freeSlots[freeCount] = Int32(slot)
        freeCount += 1
        inFlight -= 1
    }

    /// Delivers one completion to its waiter. Returns false for a stale or unknown user data.
    @inline(__always)
    func complete(userData: UInt64, result: Int32, flags: UInt32) -> Bool {
        guard isLive(userData) else { return false }
        let slot = Int(UInt32(truncatingIfNeeded: userData))
        if case .multishot(let box) = slots[slot].waiter {
            let more = cs_cqe_has_more(flags)
            if !more { release(userData) }
            if let handler = box.handler {
                handler.complete(result: result, more: more)
            } else if result >= 0 {
                close(result)  // a connection accepted for a listener that no longer exists
            }
            return true
        }
        // Move the waiter out rather than copy it: a copy would retain and release the closure or handler.
        var waiter = CompletionWaiter.none
        swap(&waiter, &slots[slot].waiter)
        release(userData)
        switch waiter {
        case .continuation(let continuation): continuation.resume(returning: result)
        case .callback(let callback): callback(result)
        case .multishot, .none: break
        }
        return true
    }

    /// User data of every request in flight (for cancelling them all at shutdown).
    func liveUserData() -> [UInt64] {
        (0..<capacity).filter { slots[$0].live }.map { UInt64(slots[$0].generation) << 32 | UInt64($0) }
    }
}
