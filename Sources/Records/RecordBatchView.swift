import CSupport

/// A key and a value (a user header or a system property), as views into a batch's bytes.
public struct RecordPair {
    public let key: UnsafeRawBufferPointer
    public let value: UnsafeRawBufferPointer

    public init(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        self.key = key
        self.value = value
    }
}

/// The pairs of one list (headers or properties) in a validated batch, read without copying.
public struct RecordPairs: Sequence {
    let base: UnsafeRawBufferPointer
    public let count: Int

    public struct Iterator: IteratorProtocol {
        var position: Int
        var remaining: Int
        let bytes: UnsafeRawBufferPointer

        public mutating func next() -> RecordPair? {
            guard remaining > 0 else { return nil }
            remaining -= 1
            let keyLength = Int(bytes.le(position, as: UInt16.self))
            let valueLength = Int(bytes.le(position + 2, as: UInt32.self))
            let keyStart = position + BatchLayout.pairFixed
            let valueStart = keyStart + keyLength
            position = valueStart + valueLength
            return RecordPair(key: UnsafeRawBufferPointer(rebasing: bytes[keyStart..<valueStart]),
                              value: UnsafeRawBufferPointer(rebasing: bytes[valueStart..<position]))
        }
    }

    public func makeIterator() -> Iterator { Iterator(position: 0, remaining: count, bytes: base) }
}

/// One record of a validated batch. Its headers, properties and value are views into the batch's bytes: valid while
/// those bytes are.
public struct RecordView {
    /// The record's stream offset: the batch's base offset plus its position in the batch.
    public let offset: UInt64
    /// Milliseconds since the Unix epoch.
    public let timestamp: Int64
    public let headers: RecordPairs
    public let properties: RecordPairs
    public let value: UnsafeRawBufferPointer
}

/// A record batch whose every length, count and checksum has been checked against `RecordLimits`: reading it
/// afterwards cannot go past its end. Holds no memory of its own; the bytes must outlive the view.
public struct RecordBatchView {
    public let bytes: UnsafeRawBufferPointer

    public var checksum: UInt64 { bytes.le(BatchLayout.checksum) }
    public var recordCount: Int { Int(bytes.le(BatchLayout.recordCount, as: UInt32.self)) }
    public var streamID: UInt64 { bytes.le(BatchLayout.streamID) }
    public var rangeIndex: UInt32 { bytes.le(BatchLayout.rangeIndex) }
    public var baseOffset: UInt64 { bytes.le(BatchLayout.baseOffset) }
    /// One past the last record's offset.
    public var endOffset: UInt64 { baseOffset + UInt64(recordCount) }
    public var baseTimestamp: Int64 { bytes.le(BatchLayout.baseTimestamp) }
    public var maxTimestamp: Int64 { baseTimestamp + Int64(bytes.le(BatchLayout.maxTimestampDelta, as: UInt32.self)) }
    public var properties: RecordPairs {
        RecordPairs(base: UnsafeRawBufferPointer(rebasing: bytes[BatchLayout.size...]),
                    count: Int(bytes.le(BatchLayout.propertyCount, as: UInt16.self)))
    }

    /// Checks `buffer` holds exactly one valid batch and returns a view of it.
    public init(validating buffer: UnsafeRawBufferPointer, limits: RecordLimits = .default) throws(RecordError) {
        let length = try Self.batchLength(of: buffer, limits: limits)
        guard length == buffer.count else {
            throw .malformed(what: "batch length \(length) differs from the \(buffer.count) bytes given", offset: 8)
        }
        try Self.validate(buffer, limits: limits)
        bytes = buffer
    }

    init(unchecked buffer: UnsafeRawBufferPointer) { bytes = buffer }

    /// Bytes of the fixed batch header: no batch is shorter.
    public static let minimumSize = BatchLayout.size

    /// A view of bytes this process already validated (with `init(validating:)`) and has not changed since: no
    /// checks at all.
    public init(alreadyValidated buffer: UnsafeRawBufferPointer) { bytes = buffer }

    /// The length of the batch that starts `buffer`, read from its header and checked against the limits and
    /// against the bytes available; enough to split concatenated batches.
    public static func batchLength(of buffer: UnsafeRawBufferPointer, limits: RecordLimits = .default)
        throws(RecordError) -> Int
    {
        guard buffer.count >= BatchLayout.size else {
            throw .truncated(field: "batch header", offset: 0, needed: BatchLayout.size, available: buffer.count)
        }
        let magic: UInt32 = buffer.le(BatchLayout.magic)
        guard magic == BatchLayout.magicValue else { throw .badMagic(found: magic) }
        let version: UInt8 = buffer[BatchLayout.version]
        guard version == BatchLayout.currentVersion else { throw .unsupportedVersion(version) }
        let length = Int(buffer.le(BatchLayout.batchLength, as: UInt32.self))
        let maximum = min(limits.maxBatchBytes, RecordLimits.hardMax.maxBatchBytes)
        guard length <= maximum else {
            throw .limitExceeded(what: "length", value: length, limit: maximum, offset: BatchLayout.batchLength)
        }
        guard length >= BatchLayout.size else {
            throw .malformed(what: "batch length \(length) is shorter than the header", offset: BatchLayout.batchLength)
        }
        guard length <= buffer.count else {
            throw .truncated(field: "batch", offset: 0, needed: length, available: buffer.count)
        }
        return length
    }

    private static func validate(_ b: UnsafeRawBufferPointer, limits: RecordLimits) throws(RecordError) {
        let headerSize = Int(b.le(BatchLayout.headerSize, as: UInt16.self))
        guard headerSize == BatchLayout.size else {
            throw .malformed(what: "header size \(headerSize)", offset: BatchLayout.headerSize)
        }
        guard b[BatchLayout.attributes] == 0, b.le(BatchLayout.reserved, as: UInt16.self) == 0 else {
            throw .malformed(what: "reserved bits set", offset: BatchLayout.attributes)
        }
        let stored: UInt64 = b.le(BatchLayout.checksum)
        let computed = cs_xxh3_64(b.baseAddress! + 8, b.count - 8, 0)
        guard stored == computed else { throw .checksumMismatch(stored: stored, computed: computed) }

        let count = Int(b.le(BatchLayout.recordCount, as: UInt32.self))
        guard count <= limits.maxRecordsPerBatch else {
            throw .limitExceeded(what: "record count", value: count, limit: limits.maxRecordsPerBatch,
                                 offset: BatchLayout.recordCount)
        }
        // Offsets and timestamps are sums (base plus count, base plus delta): each must fit.
        let base: UInt64 = b.le(BatchLayout.baseOffset)
        guard base <= RecordLimits.maxOffset, UInt64(count) <= RecordLimits.maxOffset - base else {
            throw .outOfRange(what: "base offset \(base) plus \(count) records passes the largest offset "
                              + "\(RecordLimits.maxOffset)", offset: BatchLayout.baseOffset)
        }
        let baseTimestamp: Int64 = b.le(BatchLayout.baseTimestamp)
        let storedDelta = Int64(b.le(BatchLayout.maxTimestampDelta, as: UInt32.self))
        guard !baseTimestamp.addingReportingOverflow(storedDelta).overflow else {
            throw .outOfRange(what: "base timestamp \(baseTimestamp) plus max timestamp delta \(storedDelta) "
                              + "passes Int64.max", offset: BatchLayout.baseTimestamp)
        }
        let propertyCount = Int(b.le(BatchLayout.propertyCount, as: UInt16.self))
        let propertiesLength = Int(b.le(BatchLayout.propertiesLength, as: UInt32.self))
        guard propertiesLength <= b.count - BatchLayout.size else {
            throw .truncated(field: "batch properties", offset: BatchLayout.size, needed: propertiesLength,
                             available: b.count - BatchLayout.size)
        }
        let afterProperties = try validatePairs(
            b, at: BatchLayout.size, count: propertyCount, countLimit: limits.maxPropertiesPerRecord,
            end: BatchLayout.size + propertiesLength, owner: .batchProperty, limits: limits)
        guard afterProperties == BatchLayout.size + propertiesLength else {
            throw .malformed(what: "batch properties length \(propertiesLength) disagrees with their contents",
                             offset: BatchLayout.propertiesLength)
        }

        var position = afterProperties
        var maxDelta: Int64 = 0
        for index in 0..<count {
            guard b.count - position >= BatchLayout.recordFixed else {
                throw .truncated(field: "record \(index)", offset: position, needed: BatchLayout.recordFixed,
                                 available: b.count - position)
            }
            let length = Int(b.le(position, as: UInt32.self))
            guard length >= BatchLayout.recordFixed - 4, length <= b.count - position - 4 else {
                throw .malformed(what: "record \(index) length \(length)", offset: position)
            }
            let end = position + 4 + length
            let delta = Int64(b.le(position + 4, as: Int32.self))
            guard delta >= 0 else { throw .malformed(what: "record \(index) timestamp before the base", offset: position + 4) }
            maxDelta = max(maxDelta, delta)
            let headerCount = Int(b.le(position + 8, as: UInt16.self))
            let recordPropertyCount = Int(b.le(position + 10, as: UInt16.self))
            let valueLength = Int(b.le(position + 12, as: UInt32.self))
            guard valueLength <= limits.maxValueBytes else {
                throw .limitExceeded(what: "record \(index) value bytes", value: valueLength,
                                     limit: limits.maxValueBytes, offset: position + 12)
            }
            var cursor = try validatePairs(
                b, at: position + BatchLayout.recordFixed, count: headerCount, countLimit: limits.maxHeadersPerRecord,
                end: end, owner: .header(record: index), limits: limits)
            cursor = try validatePairs(
                b, at: cursor, count: recordPropertyCount, countLimit: limits.maxPropertiesPerRecord, end: end,
                owner: .property(record: index), limits: limits)
            guard cursor + valueLength == end else {
                throw .malformed(what: "record \(index) length \(length) disagrees with its contents", offset: position)
            }
            position = end
        }
        guard position == b.count else {
            throw .malformed(what: "\(b.count - position) bytes after the last record", offset: position)
        }
        guard storedDelta == maxDelta else {
            throw .malformed(what: "max timestamp delta \(storedDelta), records say \(maxDelta)",
                             offset: BatchLayout.maxTimestampDelta)
        }
    }

    /// Whose pairs are being checked: named in errors only, so that a valid batch costs no string.
    enum PairOwner {
        case batchProperty
        case header(record: Int)
        case property(record: Int)

        var name: String {
            switch self {
            case .batchProperty: "batch property"
            case .header(let record): "record \(record) header"
            case .property(let record): "record \(record) property"
            }
        }
    }

    /// Checks `count` pairs starting at `start` end at or before `end`; returns where they end.
    private static func validatePairs(
        _ b: UnsafeRawBufferPointer, at start: Int, count: Int, countLimit: Int, end: Int, owner: PairOwner,
        limits: RecordLimits
    ) throws(RecordError) -> Int {
        let what = { owner.name }
        guard count <= countLimit else {
            throw .limitExceeded(what: "\(what()) count", value: count, limit: countLimit, offset: start)
        }
        var position = start
        for index in 0..<count {
            guard end - position >= BatchLayout.pairFixed else {
                throw .truncated(field: "\(what()) \(index)", offset: position, needed: BatchLayout.pairFixed,
                                 available: max(0, end - position))
            }
            let keyLength = Int(b.le(position, as: UInt16.self))
            let valueLength = Int(b.le(position + 2, as: UInt32.self))
            guard keyLength <= limits.maxKeyBytes else {
                throw .limitExceeded(what: "\(what()) \(index) key bytes", value: keyLength, limit: limits.maxKeyBytes,
                                     offset: position)
            }
            guard valueLength <= limits.maxHeaderValueBytes else {
                throw .limitExceeded(what: "\(what()) \(index) value bytes", value: valueLength,
                                     limit: limits.maxHeaderValueBytes, offset: position + 2)
            }
            let next = position + BatchLayout.pairFixed + keyLength + valueLength
            guard next <= end else {
                throw .truncated(field: "\(what()) \(index)", offset: position, needed: next - position,
                                 available: end - position)
            }
            position = next
        }
        return position
    }

    /// The records, in offset order.
    public var records: Records {
        Records(bytes: bytes, start: BatchLayout.size + Int(bytes.le(BatchLayout.propertiesLength, as: UInt32.self)),
                count: recordCount, baseOffset: baseOffset, baseTimestamp: baseTimestamp)
    }

    public struct Records: Sequence {
        let bytes: UnsafeRawBufferPointer
        let start: Int
        public let count: Int
        let baseOffset: UInt64
        let baseTimestamp: Int64

        public struct Iterator: IteratorProtocol {
            let bytes: UnsafeRawBufferPointer
            var position: Int
            var index: Int
            let count: Int
            let baseOffset: UInt64
            let baseTimestamp: Int64

            public mutating func next() -> RecordView? {
                guard index < count else { return nil }
                let p = position
                let end = p + 4 + Int(bytes.le(p, as: UInt32.self))
                let headerCount = Int(bytes.le(p + 8, as: UInt16.self))
                let propertyCount = Int(bytes.le(p + 10, as: UInt16.self))
                let valueLength = Int(bytes.le(p + 12, as: UInt32.self))
                let headersStart = p + BatchLayout.recordFixed
                let headers = RecordPairs(base: UnsafeRawBufferPointer(rebasing: bytes[headersStart..<end]),
                                          count: headerCount)
                let propertiesStart = headersStart + Self.pairsLength(bytes, at: headersStart, count: headerCount)
                let properties = RecordPairs(base: UnsafeRawBufferPointer(rebasing: bytes[propertiesStart..<end]),
                                             count: propertyCount)
                let record = RecordView(
                    offset: baseOffset + UInt64(index),
                    timestamp: baseTimestamp + Int64(bytes.le(p + 4, as: Int32.self)),
                    headers: headers, properties: properties,
                    value: UnsafeRawBufferPointer(rebasing: bytes[(end - valueLength)..<end]))
                position = end
                index += 1
                return record
            }

            @inline(__always)
            static func pairsLength(_ b: UnsafeRawBufferPointer, at start: Int, count: Int) -> Int {
                var position = start
                for _ in 0..<count {
                    position += BatchLayout.pairFixed + Int(b.le(position, as: UInt16.self))
                        + Int(b.le(position + 2, as: UInt32.self))
                }
                return position - start
            }
        }

        public func makeIterator() -> Iterator {
            Iterator(bytes: bytes, position: start, index: 0, count: count, baseOffset: baseOffset,
                     baseTimestamp: baseTimestamp)
        }
    }
}

/// Walks concatenated batches (an APPEND payload, a WAL extent), validating each.
public struct RecordBatchSequence: Sequence {
    let buffer: UnsafeRawBufferPointer
    let limits: RecordLimits

    public init(_ buffer: UnsafeRawBufferPointer, limits: RecordLimits = .default) {
        self.buffer = buffer
        self.limits = limits
    }

    public struct Iterator: IteratorProtocol {
        let buffer: UnsafeRawBufferPointer
        let limits: RecordLimits
        var position = 0
        /// Where the batch that failed to validate starts in the buffer.
        public private(set) var failedAt: Int?

        /// The next batch, or the error that stopped the walk (after which it yields nothing more).
        public mutating func next() -> Result<RecordBatchView, RecordError>? {
            guard position < buffer.count else { return nil }
            let rest = UnsafeRawBufferPointer(rebasing: buffer[position...])
            do {
                let length = try RecordBatchView.batchLength(of: rest, limits: limits)
                let view = try RecordBatchView(validating: UnsafeRawBufferPointer(rebasing: rest[..<length]),
                                               limits: limits)
                position += length
                return .success(view)
            } catch {
                // Offsets in the error count from the start of the failing batch, at `failedAt`.
                failedAt = position
                position = buffer.count
                return .failure(error)
            }
        }
    }

    public func makeIterator() -> Iterator { Iterator(buffer: buffer, limits: limits) }
}

extension RecordBatchView {
    /// Rewrites the range index of a whole, valid batch in `bytes` (the writer replays in-flight batches into the next
    /// range) and its checksum; every other byte stays as it was.
    public static func setRangeIndex(_ index: UInt32, in bytes: inout [UInt8]) {
        precondition(bytes.count >= BatchLayout.size, "not a record batch")
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: index.littleEndian, toByteOffset: BatchLayout.rangeIndex, as: UInt32.self)
            let checksum = cs_xxh3_64(raw.baseAddress! + 8, raw.count - 8, 0)
            raw.storeBytes(of: checksum.littleEndian, toByteOffset: BatchLayout.checksum, as: UInt64.self)
        }
    }
}
