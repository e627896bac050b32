import Records

/// The largest values numbers on the wire may hold, checked by every receiver (range server, placement driver,
/// client) before any arithmetic uses them, so that Swift's trapping arithmetic stays a guard that no input reaches.
/// A number past its bound is refused with INVALID_ARGUMENT naming the field (docs/protocol.md, "Numbers").
public enum WireBounds {
    /// Every offset, end offsets included (one past the last record), is at most 2^63 - 1: a signed 64-bit integer
    /// holds it, and an offset plus a batch's record count never wraps.
    public static let maxOffset: UInt64 = RecordLimits.maxOffset
    /// A writer's epoch. Opening a stream raises its epoch by one, so OPEN_STREAM's `epoch` must be below this.
    public static let maxEpoch: UInt64 = UInt64(Int64.max)
    /// Stream, range server and object ids (the placement driver allocates ids counting up from 1).
    public static let maxID: UInt64 = UInt64(Int64.max)
    /// `retention_ms`: a signed 64-bit count of milliseconds.
    public static let maxRetentionMs: UInt64 = UInt64(Int64.max)
    /// Range indexes: the next range's index is the last one's plus one, so the last usable index is one below
    /// UInt32.max.
    public static let maxRangeIndex: UInt32 = UInt32.max - 1
    /// Shard addresses a range server registers, and the bytes of each ("host:port").
    public static let maxShardAddresses = 1_024
    public static let maxAddressBytes = 255
}

/// A number outside its bound, or fields that contradict each other: INVALID_ARGUMENT, naming the field.
public struct FieldError: Error, Sendable, Hashable, CustomStringConvertible {
    public let field: String
    public let detail: String

    public init(_ field: String, _ detail: String) {
        self.field = field
        self.detail = detail
    }

    public var description: String { "\(field) \(detail)" }

    /// `value` if it is at most `limit`.
    @inline(__always)
    public static func check<T: BinaryInteger>(_ value: T, atMost limit: T, _ field: String) throws(FieldError) {
        guard value <= limit else { throw FieldError(field, "is \(value), over the largest allowed \(limit)") }
    }

    public static func offset(_ value: UInt64, _ field: String) throws(FieldError) {
        try check(value, atMost: WireBounds.maxOffset, field)
    }
}

extension Elasticstream_V1_Range {
    /// Checks a range record received from a peer (the placement driver's answers, a SEAL_RANGE or CREATE_RANGE
    /// request): offsets within bounds, a sealed range not ending before its start, an index a next range can follow,
    /// at most 64 servers. `field` names the record in errors ("range", "ranges[3]").
    public func validate(_ field: String = "range") throws(FieldError) {
        try FieldError.offset(startOffset, "\(field).start_offset")
        try FieldError.offset(endOffset, "\(field).end_offset")
        try FieldError.check(index, atMost: WireBounds.maxRangeIndex, "\(field).index")
        if sealed && endOffset < startOffset {
            throw FieldError("\(field).end_offset", "is \(endOffset), before the range's start_offset \(startOffset)")
        }
        // Addresses are only dialled (a bad one fails that call); their number is what could cost memory.
        try FieldError.check(servers.count, atMost: 64, "\(field).servers")
    }
}

extension Elasticstream_V1_RangeServer {
    /// Checks a range server record: bounded, parseable shard addresses.
    public func validate(_ field: String = "server") throws(FieldError) {
        try FieldError.check(serverID, atMost: WireBounds.maxID, "\(field).server_id")
        try FieldError.check(shardAddresses.count, atMost: WireBounds.maxShardAddresses, "\(field).shard_addresses")
        for (i, address) in shardAddresses.enumerated() {
            let name = "\(field).shard_addresses[\(i)]"
            try FieldError.check(address.utf8.count, atMost: WireBounds.maxAddressBytes, "\(name) bytes")
            let parts = address.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, let port = UInt16(parts[1]), port > 0 else {
                throw FieldError(name, "is '\(address.prefix(64))', not host:port")
            }
        }
    }
}
