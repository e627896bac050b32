import CSupport
import Platform

// The second backend of the seam. A reactor made with `Reactor(simulation:shardCount:)` has shards with no thread and
// no ring: every job, posted call, timer, file and connection of its shards goes to a `SimulationBackend`, which runs
// the whole simulated cluster on one thread, in virtual time, in an order drawn from a seed (Sources/Simulation).
// The engine cannot tell: it holds the same `ShardContext`, `File`, `TCPConnection` and `TCPListener` either way, and
// each of them asks once, with one well-predicted branch, which backend it has.

/// The simulator as one simulated process (a node or a client) sees it.
public protocol SimulationBackend: AnyObject {
    /// Queues a job of `shard`; the simulator runs it later with `Shard.runSimulated(_:)`.
    func schedule(_ job: UnownedJob, on shard: Shard)
    /// Queues a plain call on `shard` (`Shard.post`).
    func schedule(_ call: @escaping @Sendable () -> Void, on shard: Shard)

    /// The process's monotonic clock (virtual).
    var now: Instant { get }
    /// The process's wall clock in milliseconds since the epoch (virtual; it may jump and drift).
    var wallClockMilliseconds: Int64 { get }
    /// The next number of the run's seeded generator.
    func nextRandom() -> UInt64
    /// Suspends until `deadline` on the virtual clock. Throws `.cancelled` when the task is cancelled first.
    func sleep(until deadline: Instant, on shard: Shard) async throws(IOError)

    func open(_ path: String, options: FileOpenOptions, on shard: Shard) async throws(IOError) -> any SimulatedFile
    func rename(_ from: String, to: String, on shard: Shard) async throws(IOError)
    func syncDirectory(_ path: String, on shard: Shard) async throws(IOError)
    func createDirectory(_ path: String, on shard: Shard) async throws(IOError)
    func removeFile(_ path: String, on shard: Shard) async throws(IOError)
    /// The size of the file at `path`, or nil when there is none.
    func fileSize(_ path: String, on shard: Shard) async -> Int?
    /// The names (not paths) of the entries of directory `path`.
    func listDirectory(_ path: String, on shard: Shard) async throws(IOError) -> [String]

    func listen(host: String, port: UInt16, on shard: Shard) throws(IOError) -> any SimulatedListener
    func connect(host: String, port: UInt16, on shard: Shard) async throws(IOError) -> any SimulatedConnection
}

/// A simulated open file.
public protocol SimulatedFile: AnyObject {
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) async throws(IOError) -> Int
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, durable: Bool) async throws(IOError) -> Int
    func sync() async throws(IOError)
    func allocate(at offset: UInt64, length: UInt64) async throws(IOError)
    func truncate(to length: UInt64) async throws(IOError)
    func close()
}

/// One end of a simulated TCP connection.
public protocol SimulatedConnection: AnyObject {
    var peer: String { get }
    func receive(into buffer: UnsafeMutableRawBufferPointer) async throws(IOError) -> Int
    func send(_ buffer: UnsafeRawBufferPointer) async throws(IOError)
    func close()
}

/// A simulated listening socket.
public protocol SimulatedListener: AnyObject {
    var port: UInt16 { get }
    func accept() async throws(IOError) -> any SimulatedConnection
    func close()
}

extension Shard {
    /// Runs one job of this shard, on the simulator's thread, as this shard's own thread would run it.
    public func runSimulated(_ job: UnownedJob) {
        cs_set_current_shard(Int32(index), identity)
        job.runSynchronously(isolatedTo: asUnownedSerialExecutor(), taskExecutor: asUnownedTaskExecutor())
        cs_set_current_shard(-1, nil)
    }

    /// Runs one posted call of this shard, on the simulator's thread.
    public func runSimulated(_ call: () -> Void) {
        cs_set_current_shard(Int32(index), identity)
        call()
        cs_set_current_shard(-1, nil)
    }

    /// Whether this shard belongs to a simulated reactor.
    public var isSimulated: Bool { simulation != nil }
}
