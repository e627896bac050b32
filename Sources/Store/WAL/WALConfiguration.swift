/// How a shard's write-ahead log is laid out and bounded.
public struct WALConfiguration: Sendable {
    /// How a flush is made durable: a write then an fdatasync, or one write with RWF_DSYNC.
    public enum Durability: String, Sendable {
        case fdatasync
        case dsyncWrite = "dsync-write"
    }

    /// Directory of this shard's segment files.
    public var directory: String
    /// Size of each preallocated segment file; a multiple of 4 KiB and at least two flushes.
    public var segmentSizeBytes: Int
    /// Largest single write: appends waiting together beyond this go out in the next flush.
    public var maxFlushBytes: Int
    /// Appends allowed to wait for durability at once; past it, appenders wait for room (back-pressure).
    public var maxWaitingAppends: Int
    public var durability: Durability
    /// Segments no longer needed kept for reuse; beyond this they are deleted, giving the space back.
    public var maxSpareSegments: Int

    public init(directory: String, segmentSizeBytes: Int = 64 << 20, maxFlushBytes: Int = 1 << 20,
                maxWaitingAppends: Int = 4096, durability: Durability = .fdatasync, maxSpareSegments: Int = 4) {
        self.directory = directory
        self.segmentSizeBytes = segmentSizeBytes
        self.maxFlushBytes = maxFlushBytes
        self.maxWaitingAppends = maxWaitingAppends
        self.durability = durability
        self.maxSpareSegments = maxSpareSegments
    }

    /// The largest payload one entry may carry: a flush must hold it with its header and closing padding.
    public var maxEntryPayloadBytes: Int { maxFlushBytes - 2 * WALEntryLayout.headerSize - WALEntryLayout.blockSize }

    func validate() throws(StoreError) {
        let block = WALEntryLayout.blockSize
        guard maxFlushBytes >= 4 * block, maxFlushBytes % block == 0 else {
            throw .invalidConfiguration("maxFlushBytes must be a multiple of \(block) and at least \(4 * block)")
        }
        guard segmentSizeBytes % block == 0, segmentSizeBytes >= 2 * maxFlushBytes else {
            throw .invalidConfiguration("segmentSizeBytes must be a multiple of \(block) and at least two flushes")
        }
        guard maxSpareSegments >= 0 else { throw .invalidConfiguration("maxSpareSegments must not be negative") }
        guard maxWaitingAppends >= 1 else { throw .invalidConfiguration("maxWaitingAppends must be positive") }
    }
}
