import CSupport
import Logging
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What one shard can receive: a Swift job to run, or a plain closure.
enum ShardMessage: @unchecked Sendable {
    case job(UnownedJob)
    case call(@Sendable () -> Void)
}

/// One core of the reactor: a thread (pinned to its CPU unless configured otherwise) with its own io_uring, its own
/// run queue, and its own channels from every other shard.
///
/// A shard is its own executor, both serial and task executor: tasks started with it as their preference, actors
/// whose `unownedExecutor` it is, and every awaited I/O completion all run on its one thread. State marked
/// "thread-owned" below is touched only on that thread; everything another thread may touch is atomic or behind the
/// foreign inbox's mutex, which only threads that are not shards of this reactor use.
public final class Shard: SerialExecutor, TaskExecutor, @unchecked Sendable {
    public let index: Int
    /// The CPU this shard runs on (pinned only when configured).
    public let cpu: Int
    public let numaNode: Int

    let configuration: ReactorConfiguration
    let logger: Logger
    /// Strong, and a `let`, so that reaching it costs no reference counting on the hot path; the reactor breaks the
    /// cycle (fabric → shards → fabric) when it shuts down.
    let fabric: ShardFabric
    /// The simulator this shard's work goes to, in a simulated reactor; nil in a real one.
    let simulation: (any SimulationBackend)?

    // MARK: Cross-thread state
    let sleeping = Atomic<Bool>(false)
    let stopRequested = Atomic<Bool>(false)
    /// While stopping: set when this shard has nothing to do (see `ShardFabric.isQuiescent`).
    let idle = Atomic<Bool>(false)
    /// 0 starting, 1 running, 2 failed to start, 3 stopped.
    let lifecycle = Atomic<Int>(0)
    let foreignPending = Atomic<Bool>(false)
    /// Messages from threads that are not shards of this reactor; `closed` once the shard has stopped.
    let foreignInbox = Mutex<(closed: Bool, messages: [ShardMessage])>((false, []))
    let wakeFD: Int32
    /// Bumped before and after each job: odd while a job runs. Read by the stall detector.
    let progress = Atomic<UInt64>(0)
    let droppedAfterStop = Atomic<Int>(0)
    nonisolated(unsafe) var startError: IOError?

    // MARK: Thread-owned state
    var ring: OpaquePointer?
    /// The ring setup flags the kernel granted (CS_RING_*).
    public internal(set) var grantedRingFlags: UInt32 = 0
    var runQueue = JobQueue()
    var localCalls: [@Sendable () -> Void] = []
    var overflow: [[ShardMessage]]
    var overflowCount = 0
    var wakePending: [Bool]
    var wakePendingCount = 0
    var channelWaiters: [[UnsafeContinuation<Void, Never>]]
    var channelWaiterCount = 0
    var completions: CompletionTable
    let cqes: UnsafeMutablePointer<cs_cqe>
    let cqeBatch = 256
    var wakeArmed = false
    let wakeCounter = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    var progressCount: UInt64 = 0
    var acceptingWork = true
    var bufferPool: BufferPool?

    init(index: Int, cpu: Int, configuration: ReactorConfiguration, fabric: ShardFabric, logger: Logger,
         simulation: (any SimulationBackend)? = nil) throws(IOError)
    {
        self.index = index
        self.simulation = simulation
        self.cpu = cpu
        self.numaNode = Int(cs_numa_node_of_cpu(Int32(cpu)))
        self.configuration = configuration
        self.fabric = fabric
        var logger = logger
        logger[metadataKey: "shard"] = "\(index)"
        self.logger = logger
        if simulation == nil {
            let fd = cs_eventfd_create()
            if fd < 0 { throw IOError(.eventfd, .system(errno: -fd), target: "shard \(index)") }
            wakeFD = fd
        } else {
            wakeFD = -1
        }
        overflow = Array(repeating: [], count: fabric.shardCount)
        wakePending = Array(repeating: false, count: fabric.shardCount)
        channelWaiters = Array(repeating: [], count: fabric.shardCount)
        completions = CompletionTable(capacity: configuration.maxInFlightPerShard)
        cqes = .allocate(capacity: cqeBatch)
        wakeCounter.initialize(to: 0)
    }

    deinit {
        cqes.deallocate()
        wakeCounter.deallocate()
        if wakeFD >= 0 { close(wakeFD) }
    }

    // MARK: - Identity

    /// This shard's identity as the thread-local "current shard" holds it.
    @inline(__always)
    var identity: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    /// Whether the calling thread is this shard's thread.
    @inline(__always)
    public var isCurrent: Bool { cs_current_shard_object() == identity }

    /// The shard of this reactor running the calling thread, if any: only such a shard may use the channels.
    @inline(__always)
    func withCurrentPeer<R>(_ body: (Shard?) -> R) -> R {
        guard let object = cs_current_shard_object() else { return body(nil) }
        return Unmanaged<Shard>.fromOpaque(object)._withUnsafeGuaranteedRef { current in
            current.fabric === fabric ? body(current) : body(nil)
        }
    }

    public func checkIsolated() {
        precondition(isCurrent, "expected to run on shard \(index), but this thread is shard \(cs_current_shard())")
    }

    /// Traps unless called on this shard's thread (the shard's `preconditionInEventLoop`).
    public func preconditionOnShard(file: StaticString = #fileID, line: UInt = #line) {
        precondition(isCurrent, "must run on shard \(index); running on \(cs_current_shard())", file: file, line: line)
    }

    // MARK: - Executor

    public func enqueue(_ job: consuming ExecutorJob) {
        enqueueJob(UnownedJob(job))
    }

    @inline(__always)
    func enqueueJob(_ job: UnownedJob) {
        if _slowPath(simulation != nil) {
            simulation!.schedule(job, on: self)
        } else if isCurrent {
            runQueue.push(job)
        } else {
            deliver(.job(job))
        }
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    public func asUnownedTaskExecutor() -> UnownedTaskExecutor {
        UnownedTaskExecutor(ordinary: self)
    }

    // MARK: - Messages

    /// Runs `body` on this shard, from any thread. From another shard of the reactor it travels that pair's channel
    /// (and waits in the sender's overflow list if the channel is full); from any other thread it goes through the
    /// foreign inbox. After the shard has stopped, it is counted in `droppedAfterStop` and not run.
    public func post(_ body: @escaping @Sendable () -> Void) {
        if _slowPath(simulation != nil) {
            simulation!.schedule(body, on: self)
        } else if isCurrent {
            localCalls.append(body)
        } else {
            deliver(.call(body))
        }
    }

    private func deliver(_ message: ShardMessage) {
        let sent = withCurrentPeer { peer -> Bool in
            guard let peer else { return false }
            peer.send(message, to: index)
            return true
        }
        if sent { return }
        let accepted = foreignInbox.withLock { inbox -> Bool in
            if inbox.closed { return false }
            inbox.messages.append(message)
            return true
        }
        guard accepted else {
            droppedAfterStop.add(1, ordering: .relaxed)
            return
        }
        foreignPending.store(true, ordering: .sequentiallyConsistent)
        wake()
    }

    /// On this shard's thread: sends to `target` over this pair's channel, keeping order behind anything already
    /// waiting in overflow.
    @inline(__always)
    func send(_ message: ShardMessage, to target: Int) {
        assert(isCurrent)
        if overflow[target].isEmpty && fabric.withChannel(from: index, to: target, { $0.push(message) }) {
            markForWake(target)
        } else {
            overflow[target].append(message)
            overflowCount += 1
        }
    }

    /// Whether the channel from this shard (the caller's) to `target` has room now.
    func channelHasRoom(to target: Int) -> Bool {
        overflow[target].isEmpty && !fabric.withChannel(from: index, to: target) { $0.isFull() }
    }

    /// Suspends the calling task (on this shard) until the channel to `target` has room: the back-pressure of
    /// `Reactor.submit`. The loop resumes waiters once their channel has room (`flushOutbound`).
    func waitForRoom(to target: Int) async {
        while !channelHasRoom(to: target) {
            await withUnsafeContinuation { continuation in
                // Checked again here: the await may have hopped, and room may have appeared meanwhile.
                if channelHasRoom(to: target) {
                    continuation.resume()
                } else {
                    channelWaiters[target].append(continuation)
                    channelWaiterCount += 1
                }
            }
        }
    }

    /// Remembers that `target` was sent something this loop turn; `wakeMarked()` checks once per turn whether it
    /// sleeps, so a burst of messages costs one fence, not one each (Seastar flushes its queues the same way).
    @inline(__always)
    func markForWake(_ target: Int) {
        if !wakePending[target] {
            wakePending[target] = true
            wakePendingCount += 1
        }
    }

    func wakeMarked() {
        // Pairs with the store-then-check in `sleep()`: either the sleeper sees our message, or we see it sleeping.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        for target in 0..<wakePending.count where wakePending[target] {
            wakePending[target] = false
            fabric.withShard(target) { shard in
                if shard.sleeping.load(ordering: .relaxed) { shard.wake() }
            }
        }
        wakePendingCount = 0
    }

    func wake() {
        if sleeping.compareExchange(expected: true, desired: false, ordering: .sequentiallyConsistent).exchanged {
            _ = cs_eventfd_signal(wakeFD)
        }
    }

    // MARK: - Requests

    /// Prepares one request on this shard's ring and suspends until it completes. `prepare` receives the ring, the
    /// request's user data and its scratch memory, and returns 0 or a negative errno; pointers it hands the kernel
    /// must stay valid until this returns (they do when they live in the caller's frame or the scratch memory).
    /// `offloaded` marks requests the kernel runs on its io-wq threads (see `CompletionTable.offloadedInFlight`).
    /// A negative result becomes an `IOError` naming `operation` and `target`.
    /// `urgent` hands the request to the kernel at once instead of at the end of the loop turn (for a request the
    /// work queued behind it should not delay, such as a WAL flush).
    func perform(
        _ operation: IOOperation, target: @autoclosure () -> String, offloaded: Bool = false, urgent: Bool = false,
        _ prepare: (OpaquePointer, UInt64, UnsafeMutableRawPointer) -> Int32
    ) async throws(IOError) -> Int32 {
        // The request is prepared and its waiter set inside the continuation's body, which runs on this shard with
        // no suspension in between: the await itself may hop, and a completion reaped during a hop would find no
        // waiter and be lost.
        let request = PendingRequest()
        let result = await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Int32, Never>) in
                do throws(IOError) {
                    let userData = try startRequest(operation, target: target(), offloaded: offloaded, prepare)
                    completions.setWaiter(userData, .continuation(continuation))
                    request.userData = userData
                    if urgent, let ring { _ = cs_ring_submit(ring) }
                } catch {
                    request.error = error
                    continuation.resume(returning: 0)
                }
            }
        } onCancel: {
            self.post {
                if let userData = request.userData { self.cancel(userData) }
            }
        }
        if let error = request.error { throw error }
        if result < 0 {
            if result == -ECANCELED { throw IOError(operation, .cancelled, target: target()) }
            throw IOError(operation, .system(errno: -result), target: target())
        }
        return result
    }

    /// Prepares a request and returns its user data; the caller sets its waiter before anything can complete it
    /// (nothing can: completions are reaped by this same thread's loop). The request goes to the kernel at the end
    /// of the loop turn, with everything else prepared in it.
    func startRequest(
        _ operation: IOOperation, target: @autoclosure () -> String, offloaded: Bool = false,
        checkCancellation: Bool = true, _ prepare: (OpaquePointer, UInt64, UnsafeMutableRawPointer) -> Int32
    ) throws(IOError) -> UInt64 {
        guard isCurrent else {
            throw IOError(operation, .wrongShard(expected: index, actual: Int(cs_current_shard())), target: target())
        }
        guard acceptingWork, let ring else { throw IOError(operation, .shutdown, target: target()) }
        if checkCancellation && Task.isCancelled { throw IOError(operation, .cancelled, target: target()) }
        guard let userData = completions.acquire(offloaded: offloaded) else {
            throw IOError(operation, .tooManyInFlight(limit: completions.capacity), target: target())
        }
        let scratch = completions.scratch(for: userData)
        var rc = prepare(ring, userData, scratch)
        if rc == -EBUSY {
            // The submission queue is full: hand it to the kernel and try once more.
            _ = cs_ring_submit(ring)
            rc = prepare(ring, userData, scratch)
        }
        if rc < 0 {
            completions.release(userData)
            throw IOError(operation, .system(errno: -rc), target: target())
        }
        return userData
    }

    /// Asks the kernel to cancel the request `userData` if it is still in flight.
    func cancel(_ userData: UInt64) {
        assert(isCurrent)
        guard completions.isLive(userData) else { return }
        prepareControl { ring in cs_prep_cancel(ring, userData, CompletionTable.ignoredUserData) }
    }

    /// Prepares a request nobody waits for (a cancellation), making room in the submission queue if it is full.
    func prepareControl(_ prepare: (OpaquePointer) -> Int32) {
        guard let ring else { return }
        for _ in 0..<64 {
            if prepare(ring) != -EBUSY { return }
            _ = cs_ring_submit(ring)
        }
        logger.error("could not queue a control request: the submission queue stays full")
    }
}

/// A request's user data (or the error that kept it from starting), written inside the continuation's body and
/// read by the cancellation handler once it has hopped back to the shard: only that shard touches it.
final class PendingRequest: @unchecked Sendable {
    var userData: UInt64?
    var error: IOError?
}
