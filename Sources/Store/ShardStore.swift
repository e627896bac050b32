import Foundation
import Platform
import Reactor
import Records

/// The ranges of one shard and their index, as the WAL's entries built them: the WAL applies each entry here the
/// moment it is durable (and recovery replays through the same call), so this state always reflects exactly the log
/// up to the WAL's durable position. Shard-bound.
final class StoreIndex: WALSink {
    var ranges: [RangeKey: RangeReplica]
    let cache: BatchCache

    init(ranges: [RangeKey: RangeReplica], cacheBytes: Int) {
        self.ranges = ranges
        cache = BatchCache(capacityBytes: cacheBytes)
    }

    func apply(_ entry: RecoveredEntry, recovering: Bool) throws(StoreError) {
        switch entry.kind {
        case .append, .appendAcknowledged:
            // The batch was validated before it was appended, and the entry's checksum (which covers every byte)
            // passed: these are the bytes that were validated. Only the header is read.
            let prefix = entry.kind == .appendAcknowledged ? 8 : 0
            guard entry.payload.count >= prefix + RecordBatchView.minimumSize else {
                throw .corruption(file: "WAL", position: entry.position, detail: "append entry shorter than a batch")
            }
            let batch = UnsafeRawBufferPointer(rebasing: entry.payload[prefix...])
            let view = RecordBatchView(alreadyValidated: batch)
            let key = RangeKey(streamID: view.streamID, index: view.rangeIndex)
            guard let range = ranges[key] else { return }
            if prefix > 0 {
                let acknowledged = UInt64(littleEndian: entry.payload.loadUnaligned(as: UInt64.self))
                range.acknowledgedEnd = max(range.acknowledgedEnd, acknowledged)
                range.acknowledgedPending = max(range.acknowledgedPending, range.acknowledgedEnd)
            }
            // A sealed range takes only repairs: batches below its sealed end that it missed.
            guard range.confirmedEnd == view.baseOffset, view.endOffset <= range.sealedEnd ?? .max else { return }
            range.add(BatchLocation(baseOffset: view.baseOffset, endOffset: view.endOffset,
                                    payloadPosition: entry.position + UInt64(WALEntryLayout.headerSize + prefix),
                                    length: batch.count, maxTimestamp: view.maxTimestamp))
            if !recovering { cache.insert(batch, range: key, baseOffset: view.baseOffset) }
            range.settled()
        case .acknowledge:
            guard let record = RangeRecord(entry.payload) else {
                throw .corruption(file: "WAL", position: entry.position, detail: "malformed \(entry.kind) entry")
            }
            guard let range = ranges[record.key] else { return }
            range.acknowledgedEnd = max(range.acknowledgedEnd, record.offset)
            range.acknowledgedPending = max(range.acknowledgedPending, range.acknowledgedEnd)
        case .createRange, .sealRange, .trimRange, .deleteRange, .discardFrom:
            guard let record = RangeRecord(entry.payload) else {
                throw .corruption(file: "WAL", position: entry.position, detail: "malformed \(entry.kind) entry")
            }
            switch entry.kind {
            case .createRange:
                if ranges[record.key] == nil { ranges[record.key] = RangeReplica(key: record.key, start: record.offset) }
            case .sealRange:
                ranges[record.key]?.sealedEnd = record.offset
            case .trimRange:
                guard let range = ranges[record.key] else { return }
                range.trim(below: record.offset)
                cache.remove(range: record.key, below: range.start)
            case .discardFrom:
                // Only ever logged for a sealed replica with nothing in flight; replayed, the same holds.
                guard let range = ranges[record.key], range.sealedEnd != nil, range.pendingEnd == range.confirmedEnd
                else { return }
                range.discard(from: record.offset)
                cache.remove(range: record.key, from: range.confirmedEnd)
            default:
                ranges[record.key] = nil
                cache.remove(range: record.key)
            }
        case .padding:
            break
        }
    }
}

/// The range replicas of one shard, persisted in its write-ahead log: create, append at an expected offset, seal,
/// read by offset or timestamp, describe, trim, delete. The index is checkpointed every `checkpointIntervalBytes` of
/// log, so recovery replays only the log after the last checkpoint, and segments nothing points into any more are
/// reused. Shard-bound: open it on a shard and use it there only (its entry points check).
public final class ShardStore {
    public let configuration: StoreConfiguration
    let context: ShardContext
    let wal: WriteAheadLog
    private let index: StoreIndex
    private let checkpoints: CheckpointWriter
    private var checkpointing = false
    private var checkpointFailure: StoreError?

    private var ranges: [RangeKey: RangeReplica] { index.ranges }
    private var cache: BatchCache { index.cache }

    private init(configuration: StoreConfiguration, context: ShardContext, wal: WriteAheadLog, index: StoreIndex,
                 checkpoints: CheckpointWriter) {
        self.configuration = configuration
        self.context = context
        self.wal = wal
        self.index = index
        self.checkpoints = checkpoints
    }

    /// Opens the store: loads the last checkpoint, replays the WAL after it, and (when it replayed anything, or there
    /// was no checkpoint yet) writes a new checkpoint, so that the next recovery starts from here.
    public static func open(_ configuration: StoreConfiguration, on context: ShardContext)
        async throws(StoreError) -> ShardStore
    {
        try configuration.validate()
        let directory = configuration.wal.directory
        do {
            try await context.createDirectory(directory)
        } catch {
            throw .io(error)
        }
        let segmentSize = configuration.wal.segmentSizeBytes
        let loaded = try await Checkpoint.load(directory: directory, segmentSize: segmentSize, on: context)
        let checkpoint = loaded?.newest
        let index = StoreIndex(ranges: checkpoint?.ranges ?? [:], cacheBytes: configuration.cacheBytes)
        let start = checkpoint?.position ?? 0
        let wal = try await WriteAheadLog.open(configuration.wal, on: context, from: start, sink: index)
        let checkpoints = CheckpointWriter(directory: directory, segmentSize: segmentSize, context: context,
                                           sequence: checkpoint?.sequence ?? 0, position: start,
                                           slotPositions: loaded?.positions ?? [:])
        let store = ShardStore(configuration: configuration, context: context, wal: wal, index: index,
                               checkpoints: checkpoints)
        if checkpoint == nil || wal.durablePosition > start {
            // A store that cannot write a checkpoint (a full disk) still opens and serves reads: recovery then
            // replays from the older checkpoint again, and no segment is reused until a checkpoint is written.
            try? await store.checkpoint()
        } else {
            await store.reclaim(below: checkpoints.reclaimLimit)
        }
        // Best effort: on a full disk the store still opens and serves reads; an append that needs the segment gets
        // the error.
        try? await wal.prepareAhead()
        return store
    }

    /// Bytes of WAL written so far (its durable end position).
    public var walBytes: UInt64 { wal.durablePosition }
    /// Bytes of log the last open replayed (from its checkpoint to the tail).
    public var recoveredBytes: UInt64 { wal.recoveredBytes }
    /// Checkpoints written since open, and the WAL position of the newest durable one.
    public var checkpointCount: Int { checkpoints.written }
    public var checkpointPosition: UInt64 { checkpoints.position }
    /// Time the last checkpoint spent encoding the index on the shard, and writing it.
    public var lastCheckpointEncode: Duration { checkpoints.lastEncode }
    public var lastCheckpointWrite: Duration { checkpoints.lastWrite }
    /// Why the last checkpoint failed, nil once one succeeds. Appends go on meanwhile; recovery replays more.
    public var checkpointError: StoreError? { checkpointFailure }

    /// Waits for appends and a checkpoint in progress, writes a last checkpoint (so the next open replays nothing),
    /// and closes the WAL.
    public func close() async {
        await wal.drain()
        while checkpointing { try? await context.sleep(for: .microseconds(100)) }
        if checkpointFailure == nil, wal.durablePosition > checkpoints.position { try? await checkpoint() }
        await wal.close()
    }

    // MARK: - Checkpoints

    /// Writes a checkpoint of the index as it stands (exactly the WAL up to its durable position), then hands the
    /// segments below it that nothing points into to the WAL for reuse.
    public func checkpoint() async throws(StoreError) {
        onShard()
        while checkpointing {
            await withUnsafeContinuation { continuation in
                if checkpointing { checkpointWaiters.append(continuation) } else { continuation.resume() }
            }
        }
        checkpointing = true
        defer {
            checkpointing = false
            let waiters = checkpointWaiters
            checkpointWaiters = []
            for waiter in waiters { waiter.resume() }
        }
        let position = wal.durablePosition
        let live: Set<Int>
        do {
            live = try await checkpoints.write(ranges: ranges, position: position)
        } catch {
            checkpointFailure = error
            throw error
        }
        checkpointFailure = nil
        // Segments below the older checkpoint's position that its index does not point into (nor this one's: the
        // newer index only ever points into fewer old segments) are no longer needed by any recovery.
        await wal.reclaim(below: Int(checkpoints.reclaimLimit / UInt64(configuration.wal.segmentSizeBytes)),
                          live: live)
    }
    private var checkpointWaiters: [UnsafeContinuation<Void, Never>] = []

    /// Makes the segment the next flush writes into, and the one after it, ready (see `WriteAheadLog.prepareAhead`).
    public func prepareAhead() async throws(StoreError) {
        onShard()
        try await wal.prepareAhead()
    }

    private func reclaim(below position: UInt64) async {
        var live = Set<Int>()
        let segmentSize = UInt64(configuration.wal.segmentSizeBytes)
        for range in ranges.values { range.collectSegments(segmentSize: segmentSize, into: &live) }
        await wal.reclaim(below: Int(position / segmentSize), live: live)
    }

    /// Starts a checkpoint in the background once `checkpointIntervalBytes` of log were written since the last.
    private func checkpointIfDue() {
        guard configuration.checkpointIntervalBytes > 0, !checkpointing,
              wal.durablePosition - checkpoints.position >= UInt64(configuration.checkpointIntervalBytes)
        else { return }
        let store = ShardBound(self)
        context.spawn { try? await store.value.checkpoint() }
    }

    private func onShard() { context.shard.preconditionOnShard() }

    // MARK: - Ranges

    /// Creates a range replica starting at `start`. Creating it again with the same start is a no-op.
    public func createRange(_ key: RangeKey, start: UInt64) async throws(StoreError) {
        onShard()
        if let existing = ranges[key] {
            guard existing.createdStart == start else {
                throw .rangeConflict(key: key, detail: "already exists starting at \(existing.createdStart)")
            }
            return
        }
        try await log(.createRange, RangeRecord(key: key, offset: start))
        // Two creates in flight at once: the first in the log made the replica.
        if let created = ranges[key], created.createdStart != start {
            throw .rangeConflict(key: key, detail: "already exists starting at \(created.createdStart)")
        }
    }

    public func describe(_ key: RangeKey) -> RangeDescription? {
        onShard()
        guard let range = ranges[key] else { return nil }
        return RangeDescription(key: key, start: range.start, confirmedEnd: range.confirmedEnd,
                                sealedEnd: range.sealedEnd, acknowledgedEnd: range.acknowledgedEnd)
    }

    /// Records the writer's acknowledged end of an open range durably (an APPEND without records carries only
    /// that). Returns once it is durable; a lower end than one already recorded writes nothing.
    public func acknowledge(_ key: RangeKey, upTo offset: UInt64) async throws(StoreError) {
        onShard()
        guard let range = ranges[key] else { throw .rangeNotFound(key) }
        // Sealed (every record below the seal is committed), or an end as high already in the log.
        guard range.sealedEnd == nil, offset > range.acknowledgedPending else { return }
        range.acknowledgedPending = offset
        try await log(.acknowledge, RangeRecord(key: key, offset: offset))
    }

    /// Appends one validated batch at its base offset. Acknowledged (`.committed`) only once it is durable.
    /// `acknowledged` is the writer's acknowledged end the append carried: when it is new, it is logged with the
    /// batch (8 bytes more in the same entry), so committed-only readers see it after a restart too.
    public func append(_ batch: RecordBatchView, acknowledged: UInt64 = 0) async throws(StoreError) -> AppendOutcome {
        onShard()
        let key = RangeKey(streamID: batch.streamID, index: batch.rangeIndex)
        guard let range = ranges[key] else { return .rangeNotFound }
        if let end = range.sealedEnd { return .sealed(end: end) }
        if range.sealing { return .sealed(end: range.pendingEnd) }
        if range.fenced { return .sealed(end: range.confirmedEnd) }
        let base = batch.baseOffset
        if batch.endOffset <= range.confirmedEnd || base < range.confirmedEnd {
            return .alreadyCommitted(confirmedEnd: range.confirmedEnd)
        }
        if base < range.pendingEnd { return .pending }
        if base > range.pendingEnd { return .overtaken(expected: range.pendingEnd) }
        var prefix: UInt64?
        if acknowledged > range.acknowledgedPending {
            range.acknowledgedPending = acknowledged
            prefix = acknowledged
        }
        guard try await logBatch(batch, of: range, acknowledged: prefix) else { return .rangeNotFound }
        return .committed(confirmedEnd: batch.endOffset)
    }

    /// Seals the range at `end` (default: its confirmed end, once appends in flight have settled) and returns the
    /// end. A sealed range refuses appends forever, across restarts. Sealing again at the same end is a no-op.
    public func seal(_ key: RangeKey, at end: UInt64? = nil) async throws(StoreError) -> UInt64 {
        onShard()
        guard let range = ranges[key] else { throw .rangeNotFound(key) }
        if let sealed = range.sealedEnd {
            if let end, end != sealed { throw .rangeConflict(key: key, detail: "already sealed at \(sealed)") }
            return sealed
        }
        if range.sealing {
            // Another seal is in progress: its outcome is this one's.
            while range.sealing && range.sealedEnd == nil { try? await context.sleep(for: .microseconds(100)) }
            return try await seal(key, at: end)
        }
        range.sealing = true
        defer { range.sealing = false }
        await range.waitUntilSettled()
        let final = end ?? range.confirmedEnd
        try await log(.sealRange, RangeRecord(key: key, offset: final))
        return final
    }

    /// Fences the range: it takes no more appends (they are answered as sealed), and once the appends in flight have
    /// settled, returns its confirmed end. A new writer fences every replica, then seals them all at the end a quorum
    /// confirms. The fence is kept in memory only (a restart forgets it; the writer's seal is what persists).
    public func fence(_ key: RangeKey) async throws(StoreError) -> UInt64 {
        onShard()
        guard let range = ranges[key] else { throw .rangeNotFound(key) }
        if let sealed = range.sealedEnd { return min(sealed, range.confirmedEnd) }
        range.fenced = true
        await range.waitUntilSettled()
        return range.confirmedEnd
    }

    /// Appends a batch a sealed replica missed (copied from a peer): it must start at the replica's confirmed end and
    /// end at or below the sealed end. Durable when it returns `.committed`.
    public func repair(_ batch: RecordBatchView) async throws(StoreError) -> AppendOutcome {
        onShard()
        let key = RangeKey(streamID: batch.streamID, index: batch.rangeIndex)
        guard let range = ranges[key] else { return .rangeNotFound }
        guard let sealed = range.sealedEnd else { return .overtaken(expected: range.pendingEnd) }
        if range.discarding { return .pending }
        if batch.endOffset <= range.confirmedEnd { return .alreadyCommitted(confirmedEnd: range.confirmedEnd) }
        guard batch.endOffset <= sealed else { return .sealed(end: sealed) }
        if batch.baseOffset < range.pendingEnd { return .pending }
        if batch.baseOffset > range.pendingEnd { return .overtaken(expected: range.pendingEnd) }
        guard try await logBatch(batch, of: range) else { return .rangeNotFound }
        return .committed(confirmedEnd: range.confirmedEnd)
    }

    /// Writes a batch that starts at the range's pending end to the log and waits until it is durable. False when
    /// the range was deleted (or recreated) meanwhile: the log then dropped the batch. A batch too large is refused
    /// before it counts as in flight, so appends placed before it are still waited for by a seal or a fence.
    private func logBatch(_ batch: RecordBatchView, of range: RangeReplica, acknowledged: UInt64? = nil)
        async throws(StoreError) -> Bool
    {
        // 8 bytes are kept for the acknowledged end an append may carry, so the limit does not depend on it.
        let limit = wal.configuration.maxEntryPayloadBytes - 8
        guard batch.bytes.count <= limit else { throw .entryTooLarge(bytes: batch.bytes.count, limit: limit) }
        range.pendingEnd = batch.endOffset
        do {
            if let acknowledged {
                _ = try await wal.append(.appendAcknowledged, batch.bytes, prefix: acknowledged)
            } else {
                _ = try await wal.append(.append, batch.bytes)
            }
        } catch {
            // Only this append and those after it are lost (the WAL stops on a write failure).
            range.pendingEnd = min(range.pendingEnd, batch.baseOffset)
            range.settled()
            throw error
        }
        // The WAL applied the batch to the index (and the cache) when its flush became durable.
        guard ranges[range.key] === range, range.confirmedEnd >= batch.endOffset else { return false }
        checkpointIfDue()
        return true
    }

    /// Every range replica on this shard.
    public var rangeKeys: [RangeKey] { Array(ranges.keys) }
    /// How many range replicas this shard holds (without building the list).
    public var rangeCount: Int { ranges.count }

    /// Drops records below `offset` (rounded down to a batch boundary).
    public func trim(_ key: RangeKey, below offset: UInt64) async throws(StoreError) {
        onShard()
        guard ranges[key] != nil else { throw .rangeNotFound(key) }
        try await log(.trimRange, RangeRecord(key: key, offset: offset))
    }

    public func delete(_ key: RangeKey) async throws(StoreError) {
        onShard()
        guard ranges[key] != nil else { return }
        try await log(.deleteRange, RangeRecord(key: key, offset: 0))
    }

    // MARK: - Reads

    /// Whole batches holding `offset` and after, up to `maxBytes` (at least one batch when any is there), below the
    /// confirmed end (or the sealed end). Served from memory when cached, else from the WAL on disk; every batch is
    /// checked against its checksum before it is returned.
    public func read(_ key: RangeKey, from offset: UInt64, maxBytes: Int) async throws(StoreError) -> [[UInt8]] {
        onShard()
        guard let range = ranges[key] else { throw .rangeNotFound(key) }
        let limit = min(range.confirmedEnd, range.sealedEnd ?? .max)
        var locations: [BatchLocation] = []
        var bytes = 0
        var index = range.firstBatch(containingOrAfter: offset)
        while index < range.batches.count {
            let location = range.batches[index]
            if location.baseOffset >= limit { break }
            if !locations.isEmpty && bytes + location.length > maxBytes { break }
            locations.append(location)
            bytes += location.length
            index += 1
        }
        // Cached batches come from memory; runs of the others that sit together in one segment are read from disk
        // in one request.
        var result: [[UInt8]] = []
        result.reserveCapacity(locations.count)
        var position = 0
        while position < locations.count {
            if let cached = cache.lookup(range: key, baseOffset: locations[position].baseOffset) {
                result.append(cached)
                position += 1
                continue
            }
            var end = position + 1
            let segment = locations[position].payloadPosition / UInt64(configuration.wal.segmentSizeBytes)
            while end < locations.count,
                  !cache.contains(range: key, baseOffset: locations[end].baseOffset),
                  locations[end].payloadPosition / UInt64(configuration.wal.segmentSizeBytes) == segment,
                  locations[end].payloadPosition + UInt64(locations[end].length)
                      - locations[position].payloadPosition <= UInt64(4 << 20)
            {
                end += 1
            }
            let first = locations[position].payloadPosition
            let span = try await wal.read(
                at: first, length: Int(locations[end - 1].payloadPosition + UInt64(locations[end - 1].length) - first))
            for location in locations[position..<end] {
                let from = Int(location.payloadPosition - first)
                let batch = Array(span[from..<(from + location.length)])
                do {
                    try check(batch, key, location)
                } catch {
                    await discardIfDamaged(key, location)
                    throw error
                }
                result.append(batch)
            }
            position = end
        }
        return result
    }

    /// The offset of the first record at or after `timestamp` (milliseconds since the epoch), if any.
    public func offset(_ key: RangeKey, atOrAfter timestamp: Int64) async throws(StoreError) -> UInt64? {
        onShard()
        guard let range = ranges[key] else { throw .rangeNotFound(key) }
        var index = range.firstBatch(withMaxTimestampAtLeast: timestamp)
        while index < range.batches.count {
            let location = range.batches[index]
            let bytes = try await batchBytes(key, location)
            let found = bytes.withUnsafeBytes { raw -> UInt64? in
                guard let view = try? RecordBatchView(validating: raw) else { return nil }
                return view.records.first { $0.timestamp >= timestamp }?.offset
            }
            if let found { return found }
            index += 1
        }
        return nil
    }

    private func batchBytes(_ key: RangeKey, _ location: BatchLocation) async throws(StoreError) -> [UInt8] {
        if let cached = cache.lookup(range: key, baseOffset: location.baseOffset) { return cached }
        let bytes = try await wal.read(at: location.payloadPosition, length: location.length)
        do {
            try check(bytes, key, location)
        } catch {
            await discardIfDamaged(key, location)
            throw error
        }
        return bytes
    }

    /// A batch of a sealed replica failed its checks when read back. If it fails them again, read once more from
    /// the disk (a read can go wrong where the disk holds good data), the replica forgets it and everything after it,
    /// durably, so that it no longer claims records it cannot serve, and the next repair (reconciliation, or a seal
    /// sent to it) copies them again from a peer. A checkpoint follows at once, so that recovery never scans the
    /// damaged entry again (it would take it for corruption of the log and refuse to open the store). An open
    /// replica keeps its index (its writer still appends after it): the read fails, and the client reads from
    /// another replica.
    private func discardIfDamaged(_ key: RangeKey, _ location: BatchLocation) async {
        func current(_ range: RangeReplica) -> Bool {
            // The index still holds this batch where it was read from: no trim, repair or earlier discard since.
            let index = range.firstBatch(containingOrAfter: location.baseOffset)
            return index < range.batches.count && range.batches[index].baseOffset == location.baseOffset
                && range.batches[index].payloadPosition == location.payloadPosition
        }
        guard let range = ranges[key], range.sealedEnd != nil, !range.discarding, current(range) else { return }
        range.discarding = true
        defer { range.discarding = false }
        guard let again = try? await wal.read(at: location.payloadPosition, length: location.length),
              (try? check(again, key, location)) == nil,
              ranges[key] === range, range.pendingEnd == range.confirmedEnd, current(range)
        else { return }
        // No repair batch may be placed in the log until the discard is applied (repairs wait while `discarding`):
        // live and replayed, the log then applies the same way.
        discards += 1
        do {
            try await log(.discardFrom, RangeRecord(key: key, offset: location.baseOffset))
            try await checkpoint()
        } catch {
            // The WAL failed (that is reported as fatal), or the checkpoint did: the next one covers it.
        }
    }

    /// Damaged batches of sealed replicas discarded for repair (`discardIfDamaged`), since the store opened.
    public private(set) var discards = 0

    /// A batch read back from disk must pass its own checksum, and be the batch the index put there (its range and
    /// offsets): never hand out altered bytes, nor a valid batch that a misdirected write left in another's place.
    private func check(_ bytes: [UInt8], _ key: RangeKey, _ location: BatchLocation) throws(StoreError) {
        let valid = bytes.withUnsafeBytes { raw -> Bool in
            guard let view = try? RecordBatchView(validating: raw) else { return false }
            return view.streamID == key.streamID && view.rangeIndex == key.index
                && view.baseOffset == location.baseOffset && view.endOffset == location.endOffset
        }
        guard valid else {
            throw .corruption(file: "WAL", position: location.payloadPosition,
                              detail: "batch at offset \(location.baseOffset) of \(key) fails its checks")
        }
    }

    // MARK: - WAL records

    private func log(_ kind: WALEntryKind, _ record: RangeRecord) async throws(StoreError) {
        let bytes = record.encoded()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 8)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: bytes)
        _ = try await wal.append(kind, UnsafeRawBufferPointer(buffer))
        checkpointIfDue()
    }
}

@available(*, unavailable)
extension ShardStore: Sendable {}

/// The payload of a range-changing WAL entry: stream id, range index, one offset. Little-endian, 20 bytes.
struct RangeRecord {
    let key: RangeKey
    let offset: UInt64

    init(key: RangeKey, offset: UInt64) {
        self.key = key
        self.offset = offset
    }

    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count == 20 else { return nil }
        key = RangeKey(streamID: UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self)),
                       index: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        offset = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 12, as: UInt64.self))
    }

    func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: key.streamID.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: key.index.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: offset.littleEndian) { bytes += $0 }
        return bytes
    }
}
