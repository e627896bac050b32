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
/// foreign inbox's mutex, which only threads that are not shards use.
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

    // MARK: Cross-thread state
    let sleeping = Atomic<Bool>(false)
    let stopRequested = Atomic<Bool>(false)
    /// 0 starting, 1 running, 2 failed to start, 3 stopped.
    let lifecycle = Atomic<Int>(0)
    private let foreignPending = Atomic<Bool>(false)
    private let foreignInbox = Mutex<[ShardMessage]>([])
    let wakeFD: Int32
    /// Bumped before and after each job: odd while a job runs. Read by the stall detector.
    let progress = Atomic<UInt64>(0)
    let droppedAfterStop = Atomic<Int>(0)
    nonisolated(unsafe) var startError: IOError?

    // MARK: Thread-owned state
    var ring: OpaquePointer?
    /// The ring setup flags the kernel granted (CS_RING_*).
    public internal(set) var grantedRingFlags: UInt32 = 0
    private var runQueue = JobQueue()
    private var localCalls: [@Sendable () -> Void] = []
    private var overflow: [[ShardMessage]]
    private var overflowCount = 0
    private var wakePending: [Bool]
    private var wakePendingCount = 0
    private var channelWaiters: [[UnsafeContinuation<Void, Never>]]
    var completions: CompletionTable
    private var cqes: UnsafeMutablePointer<cs_cqe>
    private let cqeBatch = 256
    private var wakeArmed = false
    private let wakeCounter = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    private var progressCount: UInt64 = 0
    private var acceptingWork = true
    /// Set on the thread once it runs, so that jobs enqueued from it take the local path.
    var bufferPool: BufferPool?

    init(index: Int, cpu: Int, configuration: ReactorConfiguration, fabric: ShardFabric, logger: Logger)
        throws(IOError)
    {
        self.index = index
        self.cpu = cpu
        self.numaNode = Int(cs_numa_node_of_cpu(Int32(cpu)))
        self.configuration = configuration
        self.fabric = fabric
        var logger = logger
        logger[metadataKey: "shard"] = "\(index)"
        self.logger = logger
        let fd = cs_eventfd_create()
        if fd < 0 { throw IOError(.eventfd, .system(errno: -fd), target: "shard \(index)") }
        wakeFD = fd
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

    // MARK: - Executor

    public func enqueue(_ job: consuming ExecutorJob) {
        enqueueJob(UnownedJob(job))
    }

    @inline(__always)
    func enqueueJob(_ job: UnownedJob) {
        let from = Int(cs_current_shard())
        if from == index {
            runQueue.push(job)
        } else {
            deliver(.job(job), from: from)
        }
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    public func asUnownedTaskExecutor() -> UnownedTaskExecutor {
        UnownedTaskExecutor(ordinary: self)
    }

    public func checkIsolated() {
        precondition(isCurrent, "expected to run on shard \(index), but this thread is shard \(cs_current_shard())")
    }

    /// Whether the calling thread is this shard's thread.
    public var isCurrent: Bool { Int(cs_current_shard()) == index }

    /// Traps unless called on this shard's thread (the shard's `preconditionInEventLoop`).
    public func preconditionOnShard(file: StaticString = #fileID, line: UInt = #line) {
        precondition(isCurrent, "must run on shard \(index); running on \(cs_current_shard())", file: file, line: line)
    }

    // MARK: - Messages

    /// Runs `body` on this shard, from any thread. From another shard it travels that pair's channel (and waits in
    /// the sender's overflow list if the channel is full); from a thread that is not a shard it goes through the
    /// foreign inbox.
    public func post(_ body: @escaping @Sendable () -> Void) {
        let from = Int(cs_current_shard())
        if from == index {
            localCalls.append(body)
        } else {
            deliver(.call(body), from: from)
        }
    }

    private func deliver(_ message: ShardMessage, from: Int) {
        if from >= 0 && from < fabric.shardCount {
            fabric.withShard(from) { $0.send(message, to: index) }
        } else {
            guard lifecycle.load(ordering: .acquiring) < 3 else {
                droppedAfterStop.add(1, ordering: .relaxed)
                return
            }
            foreignInbox.withLock { $0.append(message) }
            foreignPending.store(true, ordering: .sequentiallyConsistent)
            wake()
        }
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
    /// `Reactor.submit`.
    func waitForRoom(to target: Int) async {
        while !channelHasRoom(to: target) {
            await withUnsafeContinuation { channelWaiters[target].append($0) }
        }
    }

    /// Remembers that `target` was sent something this loop turn; `wakeMarked()` checks once per turn whether it
    /// sleeps, so a burst of messages costs one fence, not one each (Seastar flushes its queues the same way).
    @inline(__always)
    private func markForWake(_ target: Int) {
        if !wakePending[target] {
            wakePending[target] = true
            wakePendingCount += 1
        }
    }

    private func wakeMarked() {
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

    // MARK: - The loop

    func run() {
        cs_set_current_shard(Int32(index))
        defer { cs_set_current_shard(-1) }
        if configuration.pinThreads {
            let rc = cs_pin_current_thread(Int32(cpu))
            if rc < 0 { return fail(IOError(.pin, .system(errno: -rc), target: "cpu \(cpu)")) }
        }
        var granted: UInt32 = 0
        var error: Int32 = 0
        guard let ring = cs_ring_create(configuration.ringEntries, configuration.ringEntries * 4, &granted, &error)
        else { return fail(IOError(.ringSetup, .system(errno: -error), target: "shard \(index)")) }
        self.ring = ring
        grantedRingFlags = granted
        do {
            bufferPool = try BufferPool(shard: self)
        } catch {
            cs_ring_destroy(ring)
            self.ring = nil
            return fail(error)
        }
        lifecycle.store(1, ordering: .releasing)
        logger.debug("shard started", metadata: ["cpu": "\(cpu)", "ring_flags": "\(granted)"])

        loop()

        bufferPool?.release()
        bufferPool = nil
        cs_ring_destroy(ring)
        self.ring = nil
        lifecycle.store(3, ordering: .releasing)
        // Anything a foreign thread slipped in after the last drain is counted, never silently run elsewhere.
        let late = foreignInbox.withLock { inbox in
            defer { inbox.removeAll() }
            return inbox.count
        }
        if late > 0 { droppedAfterStop.add(late, ordering: .relaxed) }
    }

    private func fail(_ error: IOError) {
        startError = error
        lifecycle.store(2, ordering: .releasing)
    }

    private func loop() {
        let pollNanoseconds = configuration.pollDuration.wholeNanoseconds
        var idleSince: UInt64 = 0
        var idleSpins = 0
        var drainDeadline: UInt64 = 0
        var cancelledAll = false
        while true {
            var worked = drainChannels()
            if !runQueue.isEmpty || !localCalls.isEmpty {
                runLocal()
                worked = true
            }
            if overflowCount > 0 && flushOverflow() > 0 { worked = true }
            if completions.inFlight > 0 || cs_ring_sq_ready(ring) > 0 {
                if pollRing() > 0 { worked = true }
            }
            if wakePendingCount > 0 { wakeMarked() }
            if worked {
                idleSince = 0
                idleSpins = 0
                continue
            }
            if stopRequested.load(ordering: .relaxed) {
                let now = cs_monotonic_ns()
                if acceptingWork {
                    acceptingWork = false
                    drainDeadline = now &+ configuration.drainTimeout.wholeNanoseconds
                }
                let busy = completions.inFlight  // the wake-up read holds no slot
                if busy == 0 && overflowCount == 0 { break }
                if now >= drainDeadline && !cancelledAll {
                    cancelledAll = true
                    cancelAllInFlight()
                    drainDeadline = now &+ configuration.drainTimeout.wholeNanoseconds
                } else if now >= drainDeadline && cancelledAll {
                    logger.error("shard stopped with requests still in flight", metadata: ["in_flight": "\(busy)"])
                    break
                }
                sleep(timeoutNanoseconds: 1_000_000)
                continue
            }
            // Spinning would keep the kernel's io-wq worker, which shares this CPU, from finishing an offloaded
            // request (an fdatasync): then sleep in the ring at once. Otherwise poll, reading the clock only every
            // 64 idle turns.
            if completions.offloadedInFlight == 0 {
                idleSpins &+= 1
                if idleSpins & 63 != 0 { continue }
                let now = cs_monotonic_ns()
                if idleSince == 0 { idleSince = now }
                if now &- idleSince < pollNanoseconds {
                    cs_cpu_relax()
                    continue
                }
            }
            // With messages still waiting for room in a peer's channel, sleep only briefly: the peer drains without
            // waking us.
            sleep(timeoutNanoseconds: overflowCount > 0 ? 100_000 : -1)
            idleSince = 0
            idleSpins = 0
        }
    }

    /// Runs queued local jobs and calls, at most one batch of each.
    private func runLocal() {
        if !localCalls.isEmpty {
            let calls = localCalls
            localCalls.removeAll(keepingCapacity: true)
            for call in calls { call() }
        }
        var budget = configuration.jobBatch
        let serial = asUnownedSerialExecutor()
        let task = asUnownedTaskExecutor()
        while budget > 0, let job = runQueue.pop() {
            budget -= 1
            progressCount &+= 1
            progress.store(progressCount, ordering: .relaxed)
            job.runSynchronously(isolatedTo: serial, taskExecutor: task)
            progressCount &+= 1
            progress.store(progressCount, ordering: .relaxed)
        }
    }

    @inline(__always)
    private func handle(_ message: consuming ShardMessage) {
        switch message {
        case .job(let job):
            progressCount &+= 1
            progress.store(progressCount, ordering: .relaxed)
            job.runSynchronously(isolatedTo: asUnownedSerialExecutor(), taskExecutor: asUnownedTaskExecutor())
            progressCount &+= 1
            progress.store(progressCount, ordering: .relaxed)
        case .call(let body):
            body()
        }
    }

    private func drainChannels() -> Bool {
        var any = false
        let batch = configuration.channelDrainBatch
        for source in 0..<fabric.shardCount where source != index {
            let drained = fabric.withChannel(from: source, to: index) { $0.drain(limit: batch) { handle($0) } }
            if drained > 0 { any = true }
        }
        if foreignPending.load(ordering: .relaxed) {
            foreignPending.store(false, ordering: .sequentiallyConsistent)
            let messages = foreignInbox.withLock { inbox in
                defer { inbox.removeAll(keepingCapacity: true) }
                return inbox
            }
            for message in messages { handle(message) }
            any = any || !messages.isEmpty
        }
        return any
    }

    /// Moves waiting messages into channels that have room; returns how many moved.
    private func flushOverflow() -> Int {
        var moved = 0
        for target in 0..<overflow.count where !overflow[target].isEmpty {
            var sent = 0
            fabric.withChannel(from: index, to: target) { channel in
                for message in overflow[target] {
                    if !channel.push(message) { break }
                    sent += 1
                }
            }
            if sent > 0 {
                moved += sent
                overflow[target].removeFirst(sent)
                overflowCount -= sent
                markForWake(target)
            }
            if overflow[target].isEmpty && !channelWaiters[target].isEmpty {
                let waiters = channelWaiters[target]
                channelWaiters[target].removeAll()
                for waiter in waiters { waiter.resume() }
            }
        }
        return moved
    }

    /// Submits what is prepared and reaps what completed. Returns the number of completions handled.
    private func pollRing() -> Int {
        let rc = cs_ring_submit_and_get_events(ring)
        if rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY {
            logger.error("io_uring submit failed", metadata: ["errno": "\(-rc)"])
        }
        return reap()
    }

    private func reap() -> Int {
        var total = 0
        while true {
            let n = Int(cs_ring_reap(ring, cqes, UInt32(cqeBatch)))
            for i in 0..<n {
                let cqe = cqes[i]
                switch cqe.user_data {
                case CompletionTable.wakeUserData:
                    wakeArmed = false
                case CompletionTable.ignoredUserData:
                    break
                default:
                    _ = completions.complete(userData: cqe.user_data, result: cqe.res, flags: cqe.flags)
                }
            }
            total += n
            if n < cqeBatch { return total }
        }
    }

    /// Sleeps in the ring until a completion, a wake-up from another thread, or the timeout (negative: none).
    private func sleep(timeoutNanoseconds: Int64) {
        sleeping.store(true, ordering: .sequentiallyConsistent)
        if hasPendingInbound() || !runQueue.isEmpty || !localCalls.isEmpty {
            sleeping.store(false, ordering: .relaxed)
            return
        }
        if !wakeArmed {
            if cs_prep_eventfd_read(ring, wakeFD, wakeCounter, CompletionTable.wakeUserData) == 0 { wakeArmed = true }
        }
        let rc = cs_ring_submit_and_wait(ring, 1, timeoutNanoseconds)
        if rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY {
            logger.error("io_uring wait failed", metadata: ["errno": "\(-rc)"])
        }
        sleeping.store(false, ordering: .relaxed)
        _ = reap()
    }

    private func hasPendingInbound() -> Bool {
        if foreignPending.load(ordering: .sequentiallyConsistent) { return true }
        for source in 0..<fabric.shardCount where source != index {
            if fabric.withChannel(from: source, to: index, { $0.hasPending() }) { return true }
        }
        return false
    }

    private func cancelAllInFlight() {
        for userData in completions.liveUserData() {
            _ = cs_prep_cancel(ring, userData, CompletionTable.ignoredUserData)
        }
        _ = cs_ring_submit(ring)
    }

    // MARK: - Requests

    /// Prepares one request on this shard's ring and suspends until it completes. `prepare` receives the ring, the
    /// request's user data and its scratch memory, and returns 0 or a negative errno. With `submitNow`, the request
    /// is submitted before `prepare`'s pointers go out of scope (open, whose path the kernel reads at submission).
    /// `offloaded` marks requests the kernel runs on its io-wq threads (see `CompletionTable.offloadedInFlight`).
    /// A negative result becomes an `IOError` naming `operation` and `target`.
    func perform(
        _ operation: IOOperation, target: @autoclosure () -> String, submitNow: Bool = false,
        offloaded: Bool = false, _ prepare: (OpaquePointer, UInt64, UnsafeMutableRawPointer) -> Int32
    ) async throws(IOError) -> Int32 {
        let userData = try startRequest(operation, target: target(), submitNow: submitNow, offloaded: offloaded,
                                        prepare)
        let result = await withTaskCancellationHandler {
            await withUnsafeContinuation { continuation in
                completions.setWaiter(userData, .continuation(continuation))
            }
        } onCancel: {
            self.post { self.cancel(userData) }
        }
        if result < 0 {
            if result == -ECANCELED { throw IOError(operation, .cancelled, target: target()) }
            throw IOError(operation, .system(errno: -result), target: target())
        }
        return result
    }

    /// Prepares a request and returns its user data; the caller sets its waiter before anything can complete it.
    func startRequest(
        _ operation: IOOperation, target: @autoclosure () -> String, submitNow: Bool = false,
        offloaded: Bool = false, _ prepare: (OpaquePointer, UInt64, UnsafeMutableRawPointer) -> Int32
    ) throws(IOError) -> UInt64 {
        guard isCurrent else {
            throw IOError(operation, .wrongShard(expected: index, actual: Int(cs_current_shard())), target: target())
        }
        guard acceptingWork, let ring else { throw IOError(operation, .shutdown, target: target()) }
        if Task.isCancelled { throw IOError(operation, .cancelled, target: target()) }
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
        if rc == 0 && submitNow {
            let submitted = cs_ring_submit(ring)
            if submitted < 0 { rc = submitted }
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
        guard let ring, completions.isLive(userData) else { return }
        if cs_prep_cancel(ring, userData, CompletionTable.ignoredUserData) == -EBUSY {
            _ = cs_ring_submit(ring)
            _ = cs_prep_cancel(ring, userData, CompletionTable.ignoredUserData)
        }
    }
}

/// The shards of one reactor and the channels between them: `shardCount * shardCount` single-producer
/// single-consumer channels, one per ordered pair (the diagonal is unused).
final class ShardFabric: @unchecked Sendable {
    let shardCount: Int
    private let channels: [SPSCChannel<ShardMessage>]
    // Unretained views of the channels and shards (kept alive by the arrays beside them). The hot paths reach them
    // through these, because retaining an object that two cores share makes its reference count bounce between
    // their caches on every message.
    private let channelRefs: [Unmanaged<SPSCChannel<ShardMessage>>]
    private var shardRefs: [Unmanaged<Shard>] = []
    /// Filled once, before any shard thread starts; read-only afterwards.
    var shards: [Shard] = [] {
        didSet { shardRefs = shards.map { Unmanaged.passUnretained($0) } }
    }

    init(shardCount: Int, channelCapacity: Int) {
        self.shardCount = shardCount
        channels = (0..<(shardCount * shardCount)).map { _ in SPSCChannel(capacity: channelCapacity) }
        channelRefs = channels.map { Unmanaged.passUnretained($0) }
    }

    @inline(__always)
    func withChannel<R>(from source: Int, to target: Int, _ body: (SPSCChannel<ShardMessage>) -> R) -> R {
        channelRefs[source &* shardCount &+ target]._withUnsafeGuaranteedRef(body)
    }

    @inline(__always)
    func withShard<R>(_ index: Int, _ body: (Shard) -> R) -> R {
        shardRefs[index]._withUnsafeGuaranteedRef(body)
    }
}

/// A shard-bound value carried through a closure that the compiler must treat as Sendable (a cancellation handler)
/// but that only ever touches the value after hopping back to the value's shard with `Shard.post`.
struct ShardBound<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
