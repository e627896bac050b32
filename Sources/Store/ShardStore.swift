import Foundation
import Platform
import Reactor
import Records

/// The range replicas of one shard, persisted in its write-ahead log: create, append at an expected offset, seal,
/// read by offset or timestamp, describe, trim, delete. Shard-bound: open it on a shard and use it there only (its
/// entry points check).
public final class ShardStore {
    public let configuration: StoreConfiguration
    let context: ShardContext
    let wal: WriteAheadLog
    private var ranges: [RangeKey: RangeReplica]
    private let cache: BatchCache

    private init(configuration: StoreConfiguration, context: ShardContext, wal: WriteAheadLog,
                 ranges: [RangeKey: RangeReplica]) {
        self.configuration = configuration
        self.context = context
        self.wal = wal
        self.ranges = ranges
        cache = BatchCache(capacityBytes: configuration.cacheBytes)
    }

    /// Opens the store, rebuilding every range and its index from the WAL.
    public static func open(_ configuration: StoreConfiguration, on context: ShardContext)
        async throws(StoreError) -> ShardStore
    {
        var ranges: [RangeKey: RangeReplica] = [:]
        let wal = try await WriteAheadLog.open(configuration.wal, on: context) { (entry) throws(StoreError) in
            try Self.replay(entry, into: &ranges)
        }
        return ShardStore(configuration: configuration, context: context, wal: wal, ranges: ranges)
    }

    /// Bytes of WAL written so far (its durable end position).
    public var walBytes: UInt64 { wal.durablePosition }

    public func close() async {
        await wal.close()
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
        if ranges[key] == nil { ranges[key] = RangeReplica(key: key, start: start) }
    }

    public func describe(_ key: RangeKey) -> RangeDescription? {
        onShard()
        guard let range = ranges[key] else { return nil }
        return RangeDescription(key: key, start: range.start, confirmedEnd: range.confirmedEnd,
                                sealedEnd: range.sealedEnd)
    }

    /// Appends one validated batch at its base offset. Acknowledged (`.committed`) only once it is durable.
    public func append(_ batch: RecordBatchView) async throws(StoreError) -> AppendOutcome {
        onShard()
        let key = RangeKey(streamID: batch.streamID, index: batch.rangeIndex)
        guard let range = ranges[key] else { return .rangeNotFound }
        if let end = range.sealedEnd { return .sealed(end: end) }
        let base = batch.baseOffset
        if batch.endOffset <= range.confirmedEnd || base < range.confirmedEnd {
            return .alreadyCommitted(confirmedEnd: range.confirmedEnd)
        }
        if base < range.pendingEnd { return .pending }
        if base > range.pendingEnd { return .overtaken(expected: range.pendingEnd) }
        range.pendingEnd = batch.endOffset
        let position: UInt64
        do {
            position = try await wal.append(.append, batch.bytes)
        } catch {
            range.pendingEnd = range.confirmedEnd
            range.settled()
            throw error
        }
        // Group commit completes flushes, and the appends within one, in order: this is the range's next batch.
        assert(range.confirmedEnd == base)
        range.add(BatchLocation(baseOffset: base, endOffset: batch.endOffset,
                                payloadPosition: position + UInt64(WALEntryLayout.headerSize),
                                length: batch.bytes.count, maxTimestamp: batch.maxTimestamp))
        cache.insert(Array(batch.bytes), range: key, baseOffset: base)
        range.settled()
        return .committed(confirmedEnd: range.confirmedEnd)
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
        await range.waitUntilSettled()
        let final = end ?? range.confirmedEnd
        try await log(.sealRange, RangeRecord(key: key, offset: final))
        range.sealedEnd = final
        return final
    }

    /// Drops records below `offset` (rounded down to a batch boundary).
    public func trim(_ key: RangeKey, below offset: UInt64) async throws(StoreError) {
        onShard()
        guard let range = ranges[key] else { throw .rangeNotFound(key) }
        try await log(.trimRange, RangeRecord(key: key, offset: offset))
        range.trim(below: offset)
        cache.remove(range: key, below: range.start)
    }

    public func delete(_ key: RangeKey) async throws(StoreError) {
        onShard()
        guard ranges[key] != nil else { return }
        try await log(.deleteRange, RangeRecord(key: key, offset: 0))
        ranges[key] = nil
        cache.remove(range: key)
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
                  cache.lookup(range: key, baseOffset: locations[end].baseOffset) == nil,
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
                try check(batch, key, location)
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
        try check(bytes, key, location)
        return bytes
    }

    /// A batch read back from disk must pass its own checksum: never hand out altered bytes.
    private func check(_ bytes: [UInt8], _ key: RangeKey, _ location: BatchLocation) throws(StoreError) {
        let valid = bytes.withUnsafeBytes { raw in (try? RecordBatchView(validating: raw)) != nil }
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
    }

    private static func replay(_ entry: RecoveredEntry, into ranges: inout [RangeKey: RangeReplica])
        throws(StoreError)
    {
        switch entry.kind {
        case .append:
            let view: RecordBatchView
            do {
                view = try RecordBatchView(validating: entry.payload)
            } catch {
                throw .corruption(file: "WAL", position: entry.position, detail: "append entry: \(error)")
            }
            let key = RangeKey(streamID: view.streamID, index: view.rangeIndex)
            guard let range = ranges[key], range.confirmedEnd == view.baseOffset else { return }
            range.add(BatchLocation(baseOffset: view.baseOffset, endOffset: view.endOffset,
                                    payloadPosition: entry.position + UInt64(WALEntryLayout.headerSize),
                                    length: entry.payload.count, maxTimestamp: view.maxTimestamp))
        case .createRange, .sealRange, .trimRange, .deleteRange:
            guard let record = RangeRecord(entry.payload) else {
                throw .corruption(file: "WAL", position: entry.position, detail: "malformed \(entry.kind) entry")
            }
            switch entry.kind {
            case .createRange:
                if ranges[record.key] == nil { ranges[record.key] = RangeReplica(key: record.key, start: record.offset) }
            case .sealRange: ranges[record.key]?.sealedEnd = record.offset
            case .trimRange: ranges[record.key]?.trim(below: record.offset)
            default: ranges[record.key] = nil
            }
        case .padding:
            break
        }
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
