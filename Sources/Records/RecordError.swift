/// Why bytes are not a valid record batch, or why a batch could not be built. Every case says what was wrong and
/// where (a byte offset from the start of the batch), so a corrupt batch can be reported precisely and never traps.
public enum RecordError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Fewer bytes than `field` needs at `offset`.
    case truncated(field: String, offset: Int, needed: Int, available: Int)
    case badMagic(found: UInt32)
    case unsupportedVersion(UInt8)
    /// The stored checksum does not match the bytes.
    case checksumMismatch(stored: UInt64, computed: UInt64)
    /// A count or size is over its limit.
    case limitExceeded(what: String, value: Int, limit: Int, offset: Int)
    /// A field holds an impossible value (a length that disagrees with what contains it, say).
    case malformed(what: String, offset: Int)
    /// The builder's buffer cannot hold the next record.
    case bufferTooSmall(needed: Int, available: Int)
    /// A number whose sum with another would leave what the format can express (an end offset past 2^63 - 1, a
    /// timestamp past Int64.max).
    case outOfRange(what: String, offset: Int)

    public var description: String {
        switch self {
        case .truncated(let field, let offset, let needed, let available):
            return "record batch truncated: \(field) at byte \(offset) needs \(needed) bytes, \(available) remain"
        case .badMagic(let found):
            return "not a record batch: magic 0x\(String(found, radix: 16)) at byte 12"
        case .unsupportedVersion(let version): return "record batch version \(version) is not supported"
        case .checksumMismatch(let stored, let computed):
            return "record batch checksum mismatch: stored 0x\(String(stored, radix: 16)), "
                + "computed 0x\(String(computed, radix: 16))"
        case .limitExceeded(let what, let value, let limit, let offset):
            return "record batch \(what) is \(value), over the limit of \(limit) (byte \(offset))"
        case .malformed(let what, let offset): return "record batch malformed: \(what) at byte \(offset)"
        case .outOfRange(let what, let offset): return "record batch out of range: \(what) at byte \(offset)"
        case .bufferTooSmall(let needed, let available):
            return "record batch buffer too small: \(needed) bytes needed, \(available) available"
        }
    }
}
