/// A range replica on a shard: a stream id and the range's index in the stream.
public struct RangeKey: Hashable, Sendable, CustomStringConvertible {
    public let streamID: UInt64
    public let index: UInt32
    public init(streamID: UInt64, index: UInt32) {
        self.streamID = streamID
        self.index = index
    }
    public var description: String { "stream \(streamID) range \(index)" }
}

/// What became of an append. Only `.committed` and `.alreadyCommitted` mean the records are durable here.
public enum AppendOutcome: Sendable, Hashable {
    /// Durable; the range's confirmed end is now `confirmedEnd`.
    case committed(confirmedEnd: UInt64)
    /// These offsets were already durable (a retried write): success.
    case alreadyCommitted(confirmedEnd: UInt64)
    /// An append of these offsets is in flight; its outcome will tell.
    case pending
    /// The batch starts past the range's end: the appends before it are missing.
    case overtaken(expected: UInt64)
    /// The range is sealed at `end` and takes no appends, ever.
    case sealed(end: UInt64)
    case rangeNotFound
}

/// What a range replica holds.
public struct RangeDescription: Sendable, Hashable {
    public let key: RangeKey
    /// First offset still held (after trims).
    public let start: UInt64
    /// Every record below is durable here.
    public let confirmedEnd: UInt64
    /// Set once sealed: the range's final end.
    public let sealedEnd: UInt64?
    /// The writer's acknowledged end as its appends told this replica, durable here (0 when never told).
    public var acknowledgedEnd: UInt64 = 0
    public var isSealed: Bool { sealedEnd != nil }

    public init(key: RangeKey, start: UInt64, confirmedEnd: UInt64, sealedEnd: UInt64?, acknowledgedEnd: UInt64 = 0) {
        self.key = key
        self.start = start
        self.confirmedEnd = confirmedEnd
        self.sealedEnd = sealedEnd
        self.acknowledgedEnd = acknowledgedEnd
    }
}

/// Bounds of a shard's store.
public struct StoreConfiguration: Sendable {
    public var wal: WALConfiguration
    /// Bytes of recently appended batches kept in memory for reads of the tail.
    public var cacheBytes: Int
    /// Log written between two checkpoints of the index: recovery replays at most about this much (0: only at open
    /// and close).
    public var checkpointIntervalBytes: Int

    public init(wal: WALConfiguration, cacheBytes: Int = 64 << 20, checkpointIntervalBytes: Int = 64 << 20) {
        self.wal = wal
        self.cacheBytes = cacheBytes
        self.checkpointIntervalBytes = checkpointIntervalBytes
    }

    func validate() throws(StoreError) {
        guard cacheBytes >= 0 else { throw .invalidConfiguration("cacheBytes must not be negative") }
        guard checkpointIntervalBytes >= 0 else {
            throw .invalidConfiguration("checkpointIntervalBytes must not be negative")
        }
    }
}
