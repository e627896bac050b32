/// The bounds a batch must respect, checked by the builder when encoding and by the reader before it trusts a byte.
/// The defaults suit the engine; a reader may be stricter than the writer was, never looser than `hardMax`.
public struct RecordLimits: Sendable, Hashable {
    /// Whole batch, header included.
    public var maxBatchBytes: Int
    /// Records in one batch (the batch's `length`).
    public var maxRecordsPerBatch: Int
    /// User headers on one record.
    public var maxHeadersPerRecord: Int
    /// System properties on one record, and on the batch.
    public var maxPropertiesPerRecord: Int
    /// A header or property key.
    public var maxKeyBytes: Int
    /// A header or property value.
    public var maxHeaderValueBytes: Int
    /// One record's value.
    public var maxValueBytes: Int

    public init(
        maxBatchBytes: Int = 8 << 20, maxRecordsPerBatch: Int = 1 << 16, maxHeadersPerRecord: Int = 64,
        maxPropertiesPerRecord: Int = 32, maxKeyBytes: Int = 256, maxHeaderValueBytes: Int = 16 << 10,
        maxValueBytes: Int = 8 << 20
    ) {
        self.maxBatchBytes = maxBatchBytes
        self.maxRecordsPerBatch = maxRecordsPerBatch
        self.maxHeadersPerRecord = maxHeadersPerRecord
        self.maxPropertiesPerRecord = maxPropertiesPerRecord
        self.maxKeyBytes = maxKeyBytes
        self.maxHeaderValueBytes = maxHeaderValueBytes
        self.maxValueBytes = maxValueBytes
    }

    public static let `default` = RecordLimits()

    /// The largest offset of the format: a batch's end offset (base offset plus record count) is at most 2^63 - 1, so
    /// that offsets fit a signed 64-bit integer and no sum of an offset and a count wraps.
    public static let maxOffset: UInt64 = UInt64(Int64.max)

    /// What the format itself can express; no configuration may exceed it.
    public static let hardMax = RecordLimits(
        maxBatchBytes: 64 << 20, maxRecordsPerBatch: 1 << 20, maxHeadersPerRecord: Int(UInt16.max),
        maxPropertiesPerRecord: Int(UInt16.max), maxKeyBytes: Int(UInt16.max), maxHeaderValueBytes: 1 << 24,
        maxValueBytes: 64 << 20)
}
