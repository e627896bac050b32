import CSupport

/// Encodes one record batch into a caller's buffer: no allocation, no copy but the bytes themselves. Give the batch's
/// identity and base at creation, append records, then `finish()` writes the header and checksum and returns the
/// batch's length. Every limit is checked as records are appended; a record that does not fit leaves the batch as it
/// was before the call.
public struct RecordBatchBuilder: ~Copyable {
    private let buffer: UnsafeMutableRawBufferPointer
    private let limits: RecordLimits
    private let baseTimestamp: Int64
    private var position: Int
    private var count = 0
    private var maxTimestampDelta: Int64 = 0
    private let headerFields: (streamID: UInt64, rangeIndex: UInt32, baseOffset: UInt64, propertyCount: Int,
                               propertiesLength: Int)

    /// `buffer` must hold at least the 64-byte header and the batch properties.
    public init(
        into buffer: UnsafeMutableRawBufferPointer, streamID: UInt64, rangeIndex: UInt32, baseOffset: UInt64,
        baseTimestamp: Int64, properties: [RecordPair] = [],
        limits: RecordLimits = .default
    ) throws(RecordError) {
        let capacity = min(buffer.count, limits.maxBatchBytes, RecordLimits.hardMax.maxBatchBytes)
        guard capacity >= BatchLayout.size else {
            throw .bufferTooSmall(needed: BatchLayout.size, available: buffer.count)
        }
        let region = UnsafeMutableRawBufferPointer(rebasing: buffer[..<capacity])
        let end = try Self.writePairs(properties, into: region, at: BatchLayout.size,
                                      countLimit: limits.maxPropertiesPerRecord, what: "batch property",
                                      limits: limits)
        self.buffer = region
        self.limits = limits
        self.baseTimestamp = baseTimestamp
        position = end
        headerFields = (streamID, rangeIndex, baseOffset, properties.count, end - BatchLayout.size)
    }

    /// Records appended so far.
    public var recordCount: Int { count }
    /// Bytes the batch would take if finished now.
    public var byteCount: Int { position }

    /// Appends one record. `timestamp` is in milliseconds since the Unix epoch and must not be before the batch's
    /// base timestamp, nor more than 2^31 - 1 ms after it.
    public mutating func append(
        timestamp: Int64, value: UnsafeRawBufferPointer, headers: [RecordPair] = [], properties: [RecordPair] = []
    ) throws(RecordError) {
        guard count < limits.maxRecordsPerBatch else {
            throw .limitExceeded(what: "record count", value: count + 1, limit: limits.maxRecordsPerBatch,
                                 offset: BatchLayout.recordCount)
        }
        // A caller's timestamps may be anything: the difference is checked, never trapped on.
        let (delta, overflow) = timestamp.subtractingReportingOverflow(baseTimestamp)
        guard !overflow, delta >= 0, delta <= Int64(Int32.max) else {
            throw .malformed(what: "record timestamp \(timestamp) outside base \(baseTimestamp) + [0, 2^31) ms",
                             offset: position + 4)
        }
        guard value.count <= limits.maxValueBytes else {
            throw .limitExceeded(what: "record value bytes", value: value.count, limit: limits.maxValueBytes,
                                 offset: position + 12)
        }
        let start = position
        guard buffer.count - start >= BatchLayout.recordFixed else {
            throw .bufferTooSmall(needed: start + BatchLayout.recordFixed, available: buffer.count)
        }
        var cursor = try Self.writePairs(headers, into: buffer, at: start + BatchLayout.recordFixed,
                                         countLimit: limits.maxHeadersPerRecord, what: "header", limits: limits)
        cursor = try Self.writePairs(properties, into: buffer, at: cursor,
                                     countLimit: limits.maxPropertiesPerRecord, what: "property", limits: limits)
        guard buffer.count - cursor >= value.count else {
            throw .bufferTooSmall(needed: cursor + value.count, available: buffer.count)
        }
        if let source = value.baseAddress, value.count > 0 {
            (buffer.baseAddress! + cursor).copyMemory(from: source, byteCount: value.count)
        }
        let end = cursor + value.count
        buffer.storeLE(UInt32(end - start - 4), at: start)
        buffer.storeLE(Int32(delta), at: start + 4)
        buffer.storeLE(UInt16(headers.count), at: start + 8)
        buffer.storeLE(UInt16(properties.count), at: start + 10)
        buffer.storeLE(UInt32(value.count), at: start + 12)
        position = end
        count += 1
        maxTimestampDelta = max(maxTimestampDelta, delta)
    }

    /// Writes the header and the checksum; returns the batch's length in bytes.
    public consuming func finish() -> Int {
        let b = buffer
        b.storeLE(UInt32(position), at: BatchLayout.batchLength)
        b.storeLE(BatchLayout.magicValue, at: BatchLayout.magic)
        b[BatchLayout.version] = BatchLayout.currentVersion
        b[BatchLayout.attributes] = 0
        b.storeLE(UInt16(BatchLayout.size), at: BatchLayout.headerSize)
        b.storeLE(UInt32(count), at: BatchLayout.recordCount)
        b.storeLE(headerFields.streamID, at: BatchLayout.streamID)
        b.storeLE(headerFields.rangeIndex, at: BatchLayout.rangeIndex)
        b.storeLE(UInt32(headerFields.propertiesLength), at: BatchLayout.propertiesLength)
        b.storeLE(headerFields.baseOffset, at: BatchLayout.baseOffset)
        b.storeLE(baseTimestamp, at: BatchLayout.baseTimestamp)
        b.storeLE(UInt32(maxTimestampDelta), at: BatchLayout.maxTimestampDelta)
        b.storeLE(UInt16(headerFields.propertyCount), at: BatchLayout.propertyCount)
        b.storeLE(UInt16(0), at: BatchLayout.reserved)
        b.storeLE(cs_xxh3_64(b.baseAddress! + 8, position - 8, 0), at: BatchLayout.checksum)
        return position
    }

    private static func writePairs(
        _ pairs: [RecordPair], into b: UnsafeMutableRawBufferPointer, at start: Int, countLimit: Int,
        what: @autoclosure () -> String, limits: RecordLimits
    ) throws(RecordError) -> Int {
        guard pairs.count <= countLimit else {
            throw .limitExceeded(what: "\(what()) count", value: pairs.count, limit: countLimit, offset: start)
        }
        var position = start
        var index = 0
        for pair in pairs {
            defer { index += 1 }
            guard pair.key.count <= limits.maxKeyBytes else {
                throw .limitExceeded(what: "\(what()) \(index) key bytes", value: pair.key.count,
                                     limit: limits.maxKeyBytes, offset: position)
            }
            guard pair.value.count <= limits.maxHeaderValueBytes else {
                throw .limitExceeded(what: "\(what()) \(index) value bytes", value: pair.value.count,
                                     limit: limits.maxHeaderValueBytes, offset: position)
            }
            let needed = BatchLayout.pairFixed + pair.key.count + pair.value.count
            guard b.count - position >= needed else {
                throw .bufferTooSmall(needed: position + needed, available: b.count)
            }
            b.storeLE(UInt16(pair.key.count), at: position)
            b.storeLE(UInt32(pair.value.count), at: position + 2)
            var cursor = position + BatchLayout.pairFixed
            if pair.key.count > 0 {
                (b.baseAddress! + cursor).copyMemory(from: pair.key.baseAddress!, byteCount: pair.key.count)
                cursor += pair.key.count
            }
            if pair.value.count > 0 {
                (b.baseAddress! + cursor).copyMemory(from: pair.value.baseAddress!, byteCount: pair.value.count)
                cursor += pair.value.count
            }
            position = cursor
        }
        return position
    }
}
