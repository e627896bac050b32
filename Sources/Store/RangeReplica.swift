/// Where one batch of a range lives in the WAL.
struct BatchLocation {
    let baseOffset: UInt64
    let endOffset: UInt64
    /// WAL position of the batch bytes (the entry's payload).
    let payloadPosition: UInt64
    let length: Int
    let maxTimestamp: Int64
}

/// A range replica's state and its index: batches in offset order, each with its WAL position, and the running
/// maximum of their timestamps (non-decreasing, so "first record at or after T" is a binary search).
final class RangeReplica {
    let key: RangeKey
    /// The start the range was created with (trims move `start`, not this).
    let createdStart: UInt64
    private(set) var start: UInt64
    /// Every record below is durable.
    private(set) var confirmedEnd: UInt64
    /// `confirmedEnd` plus the appends in flight.
    var pendingEnd: UInt64
    var sealedEnd: UInt64?
    /// The writer's acknowledged end, as the durable log last recorded it (committed-only reads of an open range
    /// stop there). Survives restarts: it is in the log with the appends that carry it, and in checkpoints.
    var acknowledgedEnd: UInt64 = 0
    /// The highest acknowledged end placed in the log (durable or not yet).
    var acknowledgedPending: UInt64 = 0
    private(set) var batches: [BatchLocation] = []
    private var runningMaxTimestamp: [Int64] = []
    private var settleWaiters: [UnsafeContinuation<Void, Never>] = []

    /// A replica being sealed takes no more appends, even before the seal is durable.
    var sealing = false
    /// Fenced by a new writer: no more appends until it seals the range (in memory only).
    var fenced = false
    /// A damaged tail is being discarded (in memory only): repairs wait.
    var discarding = false

    init(key: RangeKey, start: UInt64) {
        self.key = key
        self.createdStart = start
        self.start = start
        confirmedEnd = start
        pendingEnd = start
    }

    /// A replica as a checkpoint recorded it; its batches follow through `restore`.
    init(key: RangeKey, createdStart: UInt64, start: UInt64, confirmedEnd: UInt64) {
        self.key = key
        self.createdStart = createdStart
        self.start = start
        self.confirmedEnd = confirmedEnd
        pendingEnd = confirmedEnd
    }

    /// Adds a batch of a checkpointed index (the caller checked the order).
    func restore(_ location: BatchLocation) {
        batches.append(location)
        runningMaxTimestamp.append(max(runningMaxTimestamp.last ?? .min, location.maxTimestamp))
    }

    func add(_ location: BatchLocation) {
        precondition(location.baseOffset == confirmedEnd, "batch at \(location.baseOffset), end is \(confirmedEnd)")
        batches.append(location)
        runningMaxTimestamp.append(max(runningMaxTimestamp.last ?? .min, location.maxTimestamp))
        confirmedEnd = location.endOffset
        if pendingEnd < confirmedEnd { pendingEnd = confirmedEnd }
    }

    /// Wakes sealers once no append is in flight.
    func settled() {
        guard pendingEnd == confirmedEnd, !settleWaiters.isEmpty else { return }
        let waiters = settleWaiters
        settleWaiters = []
        for waiter in waiters { waiter.resume() }
    }

    func waitUntilSettled() async {
        while pendingEnd != confirmedEnd {
            await withUnsafeContinuation { continuation in
                if pendingEnd == confirmedEnd { continuation.resume() } else { settleWaiters.append(continuation) }
            }
        }
    }

    func trim(below offset: UInt64) {
        // Keep the batch holding `offset`: trims land on batch boundaries.
        let keep = batches.firstIndex { $0.endOffset > offset } ?? batches.count
        batches.removeFirst(keep)
        runningMaxTimestamp.removeFirst(keep)
        start = max(start, batches.first?.baseOffset ?? min(offset, confirmedEnd))
    }

    /// Forgets the batch holding `offset` and every one after it: the replica ends where that batch began (a sealed
    /// replica whose copy there is damaged; repair copies them again). Nothing may be in flight.
    func discard(from offset: UInt64) {
        precondition(pendingEnd == confirmedEnd, "discarding with appends in flight")
        let keep = firstBatch(containingOrAfter: offset)
        guard keep < batches.count else { return }
        confirmedEnd = max(start, batches[keep].baseOffset)
        pendingEnd = confirmedEnd
        batches.removeLast(batches.count - keep)
        runningMaxTimestamp.removeLast(runningMaxTimestamp.count - keep)
    }

    /// Adds the WAL segments this replica's batches lie in to `live`.
    func collectSegments(segmentSize: UInt64, into live: inout Set<Int>) {
        var last = -1
        for batch in batches where Int(batch.payloadPosition / segmentSize) != last {
            last = Int(batch.payloadPosition / segmentSize)
            live.insert(last)
        }
    }

    /// Index of the first batch whose end is past `offset`.
    func firstBatch(containingOrAfter offset: UInt64) -> Int {
        var low = 0
        var high = batches.count
        while low < high {
            let mid = (low + high) / 2
            if batches[mid].endOffset <= offset { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// Index of the first batch that holds a record at or after `timestamp`.
    func firstBatch(withMaxTimestampAtLeast timestamp: Int64) -> Int {
        var low = 0
        var high = runningMaxTimestamp.count
        while low < high {
            let mid = (low + high) / 2
            if runningMaxTimestamp[mid] < timestamp { low = mid + 1 } else { high = mid }
        }
        return low
    }
}
