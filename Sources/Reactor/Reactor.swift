import CSupport
import Logging
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The thread-per-core reactor: one shard per configured CPU, each a pinned thread with its own io_uring and run
/// queue, sharing nothing, talking over single-producer single-consumer channels.
///
/// Start one with `Reactor(configuration:)`, put work on a shard with `run(on:_:)`, hop between shards with
/// `submit(to:_:)`, and stop with `shutdown()`, which drains, joins every thread and closes every descriptor the
/// reactor opened.
public final class Reactor: Sendable {
    public let shards: [Shard]
    public let configuration: ReactorConfiguration
    private let fabric: ShardFabric
    /// Joined once, by whichever of `shutdown()` and `deinit` wins the `stopped` flag.
    private let threads: [OSThread]
    private let stallDetector: StallDetector?
    private let logger: Logger
    private let stopped = Atomic<Bool>(false)

    public var shardCount: Int { shards.count }
    /// Whether this reactor's shards run in a simulator rather than on threads of their own.
    public let isSimulated: Bool

    public init(configuration: ReactorConfiguration = ReactorConfiguration(),
                logger: Logger = Logger(label: "elastic-stream.reactor")) throws(ReactorError)
    {
        try configuration.validate()
        var allowed = [Int32](repeating: 0, count: 4096)
        let allowedCount = Int(cs_allowed_cpus(&allowed, Int32(allowed.count)))
        let allowedCPUs = Array(allowed.prefix(max(0, allowedCount))).map(Int.init)
        let cpus = configuration.cpus ?? allowedCPUs
        if configuration.pinThreads, let bad = cpus.first(where: { !allowedCPUs.contains($0) }) {
            throw ReactorError.cpuNotAllowed(bad)
        }
        self.configuration = configuration
        self.logger = logger
        self.isSimulated = false
        let fabric = ShardFabric(shardCount: cpus.count, channelCapacity: configuration.channelCapacity)
        var shards: [Shard] = []
        for (index, cpu) in cpus.enumerated() {
            do {
                shards.append(try Shard(index: index, cpu: cpu, configuration: configuration, fabric: fabric,
                                        logger: logger))
            } catch {
                throw ReactorError.shardStartFailed(shard: index, error)
            }
        }
        fabric.shards = shards
        self.fabric = fabric
        self.shards = shards

        var threads: [OSThread] = []
        var failure: ReactorError?
        for shard in shards {
            guard let thread = OSThread.start(name: "es-shard-\(shard.index)", { shard.run() }) else {
                failure = .shardStartFailed(shard: shard.index, IOError(.ringSetup, .system(errno: 11)))
                break
            }
            threads.append(thread)
            // Wait for the shard to come up (its ring is made on its own thread) before starting the next.
            while shard.lifecycle.load(ordering: .acquiring) == 0 { usleep(50) }
            if shard.lifecycle.load(ordering: .acquiring) == 2 {
                failure = .shardStartFailed(shard: shard.index, shard.startError ?? IOError(.ringSetup, .shutdown))
                break
            }
        }
        self.threads = threads
        if let threshold = configuration.stallThreshold {
            stallDetector = StallDetector(shards: shards, threshold: threshold, logger: logger)
        } else {
            stallDetector = nil
        }
        if let failure {
            stopped.store(true, ordering: .sequentiallyConsistent)
            Self.stop(fabric, self.threads, stallDetector, logger)
            throw failure
        }
        stallDetector?.start()
        logger.info("reactor started", metadata: ["shards": "\(shards.count)", "cpus": "\(cpus)",
                                                  "pinned": "\(configuration.pinThreads)"])
    }

    /// A reactor of `shardCount` shards that have no thread and no ring: their jobs, calls, clock, files and
    /// connections all go to `simulation` (one simulated process of a deterministic simulation).
    public init(simulation: any SimulationBackend, shardCount: Int,
                configuration: ReactorConfiguration = ReactorConfiguration(pinThreads: false),
                logger: Logger = Logger(label: "elastic-stream.reactor")) throws(ReactorError)
    {
        precondition(shardCount > 0, "a reactor needs a shard")
        self.configuration = configuration
        self.logger = logger
        self.isSimulated = true
        let fabric = ShardFabric(shardCount: shardCount, channelCapacity: configuration.channelCapacity)
        var shards: [Shard] = []
        for index in 0..<shardCount {
            do {
                shards.append(try Shard(index: index, cpu: index, configuration: configuration, fabric: fabric,
                                        logger: logger, simulation: simulation))
            } catch {
                throw ReactorError.shardStartFailed(shard: index, error)
            }
        }
        fabric.shards = shards
        self.fabric = fabric
        self.shards = shards
        threads = []
        stallDetector = nil
    }

    deinit {
        if isSimulated {
            fabric.shards = []
            return
        }
        if cs_current_shard() >= 0 {
            // The last reference went away on a shard thread, which cannot join itself: stop from another thread.
            let (fabric, threads, detector, logger) = (fabric, threads, stallDetector, logger)
            let parts = ShardBound((fabric, threads, detector, logger))
            OSThread.startDetached(name: "es-reactor-stop") {
                Reactor.stop(parts.value.0, parts.value.1, parts.value.2, parts.value.3)
            }
        } else if !stopped.exchange(true, ordering: .acquiringAndReleasing) {
            Self.stop(fabric, threads, stallDetector, logger)
        }
    }

    /// Stops every shard: no new requests are taken; queued jobs, messages between shards and in-flight I/O drain
    /// until the whole reactor is quiescent (in-flight I/O still running after `drainTimeout` is cancelled); then
    /// every thread is joined and the reactor's own descriptors are closed. Call it from outside the reactor;
    /// calling it twice is harmless.
    public func shutdown() {
        if isSimulated {
            stopped.store(true, ordering: .sequentiallyConsistent)
            return
        }
        precondition(cs_current_shard() < 0, "shutdown() called from shard \(cs_current_shard()): it would deadlock")
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Self.stop(fabric, threads, stallDetector, logger)
    }

    private static func stop(_ fabric: ShardFabric, _ threads: [OSThread], _ stallDetector: StallDetector?,
                             _ logger: Logger) {
        let shards = fabric.shards
        for shard in shards {
            shard.stopRequested.store(true, ordering: .sequentiallyConsistent)
            shard.sleeping.store(true, ordering: .sequentiallyConsistent)
            shard.wake()
        }
        for thread in threads { thread.join() }
        stallDetector?.shutdown()
        let stranded = fabric.drainLeftovers()
        let dropped = shards.reduce(0) { $0 + $1.droppedAfterStop.load(ordering: .relaxed) } + stranded
        if dropped > 0 {
            logger.error("messages arrived after shutdown and were not run", metadata: ["count": "\(dropped)"])
        }
        fabric.shards = []  // breaks the reference cycle shard → fabric → shard
        logger.info("reactor stopped")
    }

    /// Sets what happens when a component finds its disk has failed under it (the WAL could not write, the Raft log
    /// could not be persisted): `elastic-stream` exits, so that its supervisor restarts it and recovery starts from
    /// what is durable; a simulation crashes the simulated process. Without a handler the component stops itself
    /// (refusing everything with a storage error) and the process goes on.
    public func onFatalFailure(_ handler: @escaping @Sendable (String) -> Void) {
        fabric.fatalHandler.withLock { $0 = handler }
    }

    /// Stalls the stall detector has reported since start.
    public var stallsReported: Int { stallDetector?.stallsReported.load(ordering: .relaxed) ?? 0 }

    /// The shard whose thread is calling, or nil on any other thread.
    public static var currentShardIndex: Int? {
        let index = Int(cs_current_shard())
        return index >= 0 ? index : nil
    }

    /// Which shard owns a key: the home of a range is `shardIndex(for: XXH3(stream id, range index))`.
    public func shardIndex(forHash hash: UInt64) -> Int { Int(hash % UInt64(shards.count)) }

    /// This reactor's shard running the calling thread, if any.
    private var currentShard: Shard? {
        guard let index = Reactor.currentShardIndex, shards.indices.contains(index), shards[index].isCurrent else {
            return nil
        }
        return shards[index]
    }

    /// Runs `body` as a task on shard `index` and returns its result. The task prefers the shard as its executor, so
    /// everything it awaits (and every child task it starts without another preference) runs on that shard.
    /// Cancelling the caller cancels the task. Throws `IOError` `.shutdown` once the reactor is stopping.
    public func run<T: Sendable>(
        on index: Int, _ body: @escaping @Sendable (ShardContext) async throws -> T
    ) async throws -> T {
        precondition(shards.indices.contains(index), "no shard \(index)")
        guard !stopped.load(ordering: .acquiring) else { throw IOError(.crossShard, .shutdown, target: "shard \(index)") }
        let shard = shards[index]
        let task = Task(executorPreference: shard) {
            try await body(ShardContext(shard: shard))
        }
        return try await withTaskCancellationHandler {
            try await task.value
        } onCancel: {
            task.cancel()
        }
    }

    /// Runs `body` on shard `target` and returns its result to the calling task (Seastar's `submit_to`). From a
    /// shard, the request and its answer travel that pair's channels; if the channel is full, the caller waits
    /// until it has room (back-pressure). `body` runs synchronously on the target: it must not block. Throws
    /// `.shutdown` once the reactor is stopping (from outside it; its own shards may still submit while draining).
    public func submit<T: Sendable>(to target: Int, _ body: @escaping @Sendable () -> T) async throws(IOError) -> T {
        precondition(shards.indices.contains(target), "no shard \(target)")
        let destination = shards[target]
        if isSimulated {
            if stopped.load(ordering: .acquiring) { throw IOError(.crossShard, .shutdown, target: "shard \(target)") }
            if let origin = currentShard, origin.index == target { return body() }
            return await withUnsafeContinuation { (continuation: UnsafeContinuation<T, Never>) in
                destination.post { continuation.resume(returning: body()) }
            }
        }
        if let origin = currentShard {
            if origin.index == target { return body() }
            await origin.waitForRoom(to: target)
        } else if stopped.load(ordering: .acquiring) {
            throw IOError(.crossShard, .shutdown, target: "shard \(target)")
        }
        return await withUnsafeContinuation { (continuation: UnsafeContinuation<T, Never>) in
            // Resumed on the target: the runtime enqueues the waiting task back on its own shard, over the channel
            // from the target to it.
            destination.post { continuation.resume(returning: body()) }
        }
    }
}
