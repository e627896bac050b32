import Platform

/// How a reactor is laid out and how its shards behave. Every bound a shard enforces is named here.
public struct ReactorConfiguration: Sendable {
    /// CPUs to run one shard each on, in shard order. Nil: every CPU this process may use.
    public var cpus: [Int]?
    /// Pin each shard's thread to its CPU. Switch off for tests on a shared machine.
    public var pinThreads: Bool
    /// Submission queue entries per shard's io_uring; completions get four times as many.
    public var ringEntries: UInt32
    /// Maximum operations in flight on one shard; one more gets `IOError.Kind.tooManyInFlight`.
    public var maxInFlightPerShard: Int
    /// Messages each single-producer single-consumer channel (one per ordered pair of shards) holds.
    public var channelCapacity: Int
    /// Maximum messages drained from one channel in one loop turn, so no peer can starve the others.
    public var channelDrainBatch: Int
    /// Maximum local jobs run in one loop turn before the shard looks at I/O and channels again.
    public var jobBatch: Int
    /// How long an idle shard keeps polling before it sleeps in its ring.
    public var pollDuration: Duration
    /// A task that holds a shard longer than this is logged as a stall. Nil switches the detector off.
    public var stallThreshold: Duration?
    /// Aligned I/O buffers per shard, registered with the ring for fixed-buffer I/O.
    public var bufferCount: Int
    /// Size of each pooled buffer; a multiple of 4 KiB.
    public var bufferSizeBytes: Int
    /// Back the buffer pool with hugepages when the system has them.
    public var useHugePages: Bool
    /// On shutdown, how long shards wait for in-flight work before cancelling it.
    public var drainTimeout: Duration

    public init(
        cpus: [Int]? = nil,
        pinThreads: Bool = true,
        ringEntries: UInt32 = 256,
        maxInFlightPerShard: Int = 4096,
        channelCapacity: Int = 1024,
        channelDrainBatch: Int = 256,
        jobBatch: Int = 512,
        pollDuration: Duration = .microseconds(200),
        stallThreshold: Duration? = .milliseconds(25),
        bufferCount: Int = 64,
        bufferSizeBytes: Int = 128 * 1024,
        useHugePages: Bool = true,
        drainTimeout: Duration = .seconds(2)
    ) {
        self.cpus = cpus
        self.pinThreads = pinThreads
        self.ringEntries = ringEntries
        self.maxInFlightPerShard = maxInFlightPerShard
        self.channelCapacity = channelCapacity
        self.channelDrainBatch = channelDrainBatch
        self.jobBatch = jobBatch
        self.pollDuration = pollDuration
        self.stallThreshold = stallThreshold
        self.bufferCount = bufferCount
        self.bufferSizeBytes = bufferSizeBytes
        self.useHugePages = useHugePages
        self.drainTimeout = drainTimeout
    }

    /// A configuration for tests on a small shared machine: unpinned, short polling, small pools.
    public static func testing(shards: Int = 2) -> ReactorConfiguration {
        ReactorConfiguration(
            cpus: Array(0..<shards), pinThreads: false, maxInFlightPerShard: 1024, pollDuration: .microseconds(50),
            bufferCount: 16, bufferSizeBytes: 64 * 1024, useHugePages: false, drainTimeout: .milliseconds(500))
    }

    public func validate() throws(ReactorError) {
        func require(_ ok: Bool, _ why: String) throws(ReactorError) {
            if !ok { throw ReactorError.invalidConfiguration(why) }
        }
        if let cpus {
            try require(!cpus.isEmpty, "cpus is empty")
            try require(Set(cpus).count == cpus.count, "cpus lists a CPU twice")
            try require(cpus.allSatisfy { $0 >= 0 }, "cpus holds a negative CPU")
        }
        try require(ringEntries >= 8 && ringEntries <= 32768 && ringEntries & (ringEntries - 1) == 0,
                    "ringEntries must be a power of two in 8...32768")
        try require(maxInFlightPerShard >= 1 && maxInFlightPerShard <= 1 << 20, "maxInFlightPerShard out of range")
        try require(channelCapacity >= 2 && channelCapacity & (channelCapacity - 1) == 0,
                    "channelCapacity must be a power of two of at least 2")
        try require(channelDrainBatch >= 1 && jobBatch >= 1, "batches must be positive")
        try require(bufferCount >= 0 && bufferSizeBytes > 0 && bufferSizeBytes % 4096 == 0,
                    "bufferSizeBytes must be a positive multiple of 4096")
        try require(pollDuration >= .zero && drainTimeout >= .zero, "durations must not be negative")
    }
}

/// Why a reactor could not start.
public enum ReactorError: Error, Sendable, Hashable, CustomStringConvertible {
    case invalidConfiguration(String)
    case cpuNotAllowed(Int)
    case shardStartFailed(shard: Int, IOError)

    public var description: String {
        switch self {
        case .invalidConfiguration(let why): return "invalid reactor configuration: \(why)"
        case .cpuNotAllowed(let cpu): return "CPU \(cpu) is not one this process may run on"
        case .shardStartFailed(let shard, let error): return "shard \(shard) failed to start: \(error)"
        }
    }
}
