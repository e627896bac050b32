import Platform
import Reactor

#if canImport(Glibc)
import Glibc
#endif

/// One simulated process on its own simulated machine: an address, a disk that outlives the process, clocks that can
/// drift and jump, and, while it runs, a simulated reactor. `start` boots it (the body runs as a task on its shard 0),
/// `crash` kills it at once (queued jobs never run, unsynced writes may be lost or torn, peers see their connections
/// end), `pause` stops it from running for a while (a SIGSTOP), and `start` again reboots it from its disk.
public final class SimulatedProcess {
    public let id: Int
    public let name: String
    public let host: String
    unowned let simulator: Simulator
    public let disk: SimulatedDisk

    /// Bumped at each boot and crash: work of an older incarnation is dropped.
    public private(set) var generation = 0
    public private(set) var isAlive = false
    public private(set) var isPaused = false
    public private(set) var reactor: Reactor?
    public private(set) var boots = 0
    var runQueues: [RunQueue] = []
    var endpoints: [SimulatedEndpoint] = []
    var listeners: [SimulatedSocketListener] = []

    /// Monotonic clock drift, in parts per million (the process's clock runs this much fast or slow).
    public var driftPPM: Int64 = 0
    /// Added to the wall clock (a clock jump changes it).
    public var wallClockOffsetMilliseconds: Int64 = 0
    /// Disk faults for this process's machine.
    public var diskFaults = DiskFaults()
    /// Writes that went astray (misdirected or lost), over every boot.
    public internal(set) var misdirectedWrites = 0

    init(simulator: Simulator, id: Int, name: String, host: String) {
        self.simulator = simulator
        self.id = id
        self.name = name
        self.host = host
        self.disk = SimulatedDisk()
    }

    /// Boots the process: a simulated reactor of `shards` shards, with `body` run as a task on its shard 0.
    public func start(shards: Int = 1, _ body: @escaping @Sendable (Reactor, ShardContext) async -> Void) {
        precondition(!isAlive, "\(name) is already running")
        generation += 1
        boots += 1
        isAlive = true
        isPaused = false
        runQueues = []
        // Each boot is its own backend, bound to its generation: a job, file or timer of an earlier boot that is still
        // referenced somewhere is dropped, never run beside the new one.
        let reactor = try! Reactor(simulation: SimulatedIncarnation(process: self, generation: generation),
                                   shardCount: shards)
        self.reactor = reactor
        simulator.trace(3, UInt64(id), UInt64(generation))
        let shard = reactor.shards[0]
        Task(executorPreference: shard) {
            await body(reactor, ShardContext(shard: shard))
        }
    }

    /// Kills the process: nothing it queued runs, its connections end (peers see them close), its listeners go,
    /// and its disk keeps what was durable plus, at random, some of what was not (`SimulatedDisk.crash`).
    public func crash() {
        guard isAlive else { return }
        simulator.trace(4, UInt64(id), UInt64(generation))
        isAlive = false
        isPaused = false
        generation += 1
        simulator.dropQueues(of: self)
        runQueues = []
        for endpoint in endpoints { endpoint.processDied() }
        endpoints = []
        for listener in listeners { listener.close() }
        listeners = []
        disk.crash(simulator, survival: diskFaults.unsyncedSurvival)
        reactor = nil
    }

    /// Crashes the process as soon as the job running now is done (for a process that decides to exit).
    public func crashSoon() {
        let generation = self.generation
        simulator.after(0) { [self] in
            if self.generation == generation { crash() }
        }
    }

    /// Stops (or resumes) running the process's jobs; timers and deliveries still arrive and wait.
    public func setPaused(_ paused: Bool) {
        guard isAlive, paused != isPaused else { return }
        simulator.trace(5, UInt64(id), paused ? 1 : 0)
        isPaused = paused
        simulator.setPaused(self, paused)
    }

    // MARK: Clock

    public var now: Instant {
        let base = simulator.now
        let drift = Int64(truncatingIfNeeded: base / 1_000_000) * driftPPM  // ns of drift per ms of time
        let skewed = Int64(truncatingIfNeeded: base) + drift
        // A large, fixed origin, so that nothing mistakes the simulated clock for a small number.
        return Instant(nanoseconds: UInt64(1_000_000_000_000) &+ UInt64(max(0, skewed)))
    }

    public var wallClockMilliseconds: Int64 {
        // 2026-01-01T00:00:00Z plus the run's virtual time.
        1_767_225_600_000 + Int64(simulator.now / 1_000_000) + wallClockOffsetMilliseconds
    }

    public func nextRandom() -> UInt64 { simulator.next() }

    public func sleep(until deadline: Instant, on shard: Shard) async throws(IOError) {
        let current = now
        if deadline <= current {
            await Task.yield()
            if Task.isCancelled { throw IOError(.timeout, .cancelled) }
            return
        }
        // Back from the process's (drifting) clock to the simulator's.
        let wait = deadline.nanoseconds - current.nanoseconds
        let scaled = driftPPM == 0 ? wait : UInt64(max(1, Int64(wait) - Int64(wait) / 1_000_000 * driftPPM))
        try await park(for: scaled, operation: .timeout)
    }

    /// Suspends the calling task on `shard` for `delay` of virtual time; cancellation ends it early with `.cancelled`.
    func park(for delay: UInt64, operation: IOOperation) async throws(IOError) {
        if Task.isCancelled { throw IOError(operation, .cancelled) }
        let waiter = Waiter()
        let simulator = self.simulator
        let fired = await waiter.wait { simulator.after(delay) { waiter.resume(true) } }
        if !fired { throw IOError(operation, .cancelled) }
    }

    /// Suspends for `delay` of virtual time whatever happens (an I/O request in flight cannot be taken back).
    func delay(_ delay: UInt64) async {
        let simulator = self.simulator
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            simulator.after(delay) { continuation.resume() }
        }
    }

    // MARK: Files

    func diskLatency() -> UInt64 {
        if simulator.chance(diskFaults.slowRate) { return simulator.between(5_000_000, 60_000_000) }
        return simulator.between(diskFaults.minLatency, diskFaults.maxLatency)
    }

    func open(_ path: String, options: FileOpenOptions, generation: Int) async throws(IOError) -> any SimulatedFile {
        await delay(diskLatency())
        guard self.generation == generation else { throw IOError(.open, .system(errno: EBADF), target: path) }
        let inode = try disk.open(path, options: options)
        return SimulatedDiskFile(path: path, inode: inode, process: self, readOnly: options.readOnly,
                                 generation: generation)
    }

    public func rename(_ from: String, to: String, on shard: Shard) async throws(IOError) {
        await delay(diskLatency())
        try disk.rename(from, to: to)
    }

    public func syncDirectory(_ path: String, on shard: Shard) async throws(IOError) {
        await delay(diskLatency())
        try failMaybe(.fsync, path)
        disk.syncDirectory(path)
    }

    public func createDirectory(_ path: String, on shard: Shard) async throws(IOError) {
        disk.createDirectory(path)
    }

    public func removeFile(_ path: String, on shard: Shard) async throws(IOError) {
        try disk.remove(path)
    }

    public func fileSize(_ path: String, on shard: Shard) async -> Int? { disk.size(path) }

    public func listDirectory(_ path: String, on shard: Shard) async throws(IOError) -> [String] {
        try disk.list(path)
    }

    /// Throws an injected EIO with the configured probability.
    func failMaybe(_ operation: IOOperation, _ path: String) throws(IOError) {
        if simulator.chance(diskFaults.errorRate) {
            simulator.trace(6, UInt64(id))
            throw IOError(operation, .system(errno: EIO), target: path)
        }
    }

    // MARK: Network

    public func listen(host: String, port: UInt16, on shard: Shard) throws(IOError) -> any SimulatedListener {
        let listener = try simulator.network.listen(host: host, port: port, process: self)
        listeners.append(listener)
        return listener
    }

    public func connect(host: String, port: UInt16, on shard: Shard) async throws(IOError)
        -> any SimulatedConnection
    {
        try await simulator.network.connect(from: self, host: host, port: port, on: shard)
    }
}

/// One boot of a simulated process: the backend its reactor's shards use. Everything it queues carries its
/// generation, so that nothing of an earlier boot runs after a crash.
final class SimulatedIncarnation: SimulationBackend {
    unowned let process: SimulatedProcess
    let generation: Int

    init(process: SimulatedProcess, generation: Int) {
        self.process = process
        self.generation = generation
    }

    func schedule(_ job: UnownedJob, on shard: Shard) {
        process.simulator.schedule(.job(job), on: shard, of: process, generation: generation)
    }

    func schedule(_ call: @escaping @Sendable () -> Void, on shard: Shard) {
        process.simulator.schedule(.call(call), on: shard, of: process, generation: generation)
    }

    var now: Instant { process.now }
    var wallClockMilliseconds: Int64 { process.wallClockMilliseconds }
    func nextRandom() -> UInt64 { process.nextRandom() }

    func sleep(until deadline: Instant, on shard: Shard) async throws(IOError) {
        try await process.sleep(until: deadline, on: shard)
    }

    func open(_ path: String, options: FileOpenOptions, on shard: Shard) async throws(IOError) -> any SimulatedFile {
        try await process.open(path, options: options, generation: generation)
    }

    func rename(_ from: String, to: String, on shard: Shard) async throws(IOError) {
        try await process.rename(from, to: to, on: shard)
    }

    func syncDirectory(_ path: String, on shard: Shard) async throws(IOError) {
        try await process.syncDirectory(path, on: shard)
    }

    func createDirectory(_ path: String, on shard: Shard) async throws(IOError) {
        try await process.createDirectory(path, on: shard)
    }

    func removeFile(_ path: String, on shard: Shard) async throws(IOError) {
        try await process.removeFile(path, on: shard)
    }

    func fileSize(_ path: String, on shard: Shard) async -> Int? { await process.fileSize(path, on: shard) }

    func listDirectory(_ path: String, on shard: Shard) async throws(IOError) -> [String] {
        try await process.listDirectory(path, on: shard)
    }

    func listen(host: String, port: UInt16, on shard: Shard) throws(IOError) -> any SimulatedListener {
        guard process.generation == generation else { throw IOError(.listen, .shutdown, target: "\(host):\(port)") }
        return try process.listen(host: host, port: port, on: shard)
    }

    func connect(host: String, port: UInt16, on shard: Shard) async throws(IOError) -> any SimulatedConnection {
        try await process.connect(host: host, port: port, on: shard)
    }
}

/// A continuation resumed once: by its timer, its event, or a cancellation, whichever comes first. The wake may come
/// before the continuation is set (the await that parks may hop to the shard first, and other jobs run in between):
/// it is then kept and delivered the moment the continuation arrives.
final class Waiter {
    private var continuation: UnsafeContinuation<Bool, Never>?
    private var early: Bool?
    private var done = false

    /// Suspends the calling task until `resume`: true when woken, false when the task was cancelled. `parked` runs
    /// once the continuation is in place (to arm what will wake it).
    func wait(_ parked: () -> Void = {}) async -> Bool {
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Bool, Never>) in
                park(continuation)
                parked()
            }
        } onCancel: { [bound = SimulatorBound(self)] in
            // On the simulator's one thread, inside the job that cancels: resumed at once, deterministically.
            bound.value.resume(false)
        }
    }

    private func park(_ continuation: UnsafeContinuation<Bool, Never>) {
        if let early {
            done = true
            continuation.resume(returning: early)
        } else {
            self.continuation = continuation
        }
    }

    func resume(_ value: Bool) {
        guard !done else { return }
        if let continuation {
            done = true
            self.continuation = nil
            continuation.resume(returning: value)
        } else if early == nil {
            early = value
        }
    }
}

/// Disk behaviour of one simulated machine.
public struct DiskFaults: Sendable {
    /// Latency of an ordinary request, in nanoseconds.
    public var minLatency: UInt64 = 20_000
    public var maxLatency: UInt64 = 400_000
    /// Probability of a request taking 5 to 60 ms.
    public var slowRate = 0.0
    /// Probability of a read, write or sync failing with EIO.
    public var errorRate = 0.0
    /// Probability that an unsynced write survives a crash (else it is lost); a surviving one may be torn.
    public var unsyncedSurvival = 0.5
    /// Probability that a read returns one flipped bit (a corrupted or misdirected block).
    public var corruptionRate = 0.0
    /// Probability that a write lands in the wrong place: a few 4 KiB blocks before or after where it was aimed in
    /// the same file, or nowhere at all when that lies outside the file (a lost write). Either way it reports
    /// success, and the place it was aimed at keeps its old content.
    public var misdirectionRate = 0.0

    public init() {}
}
