/// Why bytes from a peer are not a valid frame. Frame-level errors are fatal to the connection (the stream can no
/// longer be delimited): the receiver answers with GOAWAY (protocol error) when it can and closes.
public enum WireError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The length prefix is over the limit; refused before anything is allocated for it.
    case frameTooLarge(length: Int, limit: Int)
    /// The length prefix is smaller than the fixed header.
    case frameTooShort(length: Int)
    case badMagic(found: UInt8)
    case unsupportedVersion(UInt8)
    case unknownFlags(UInt8)
    case reservedNotZero(offset: Int)
    case headerTooLarge(length: Int, limit: Int)
    /// The header length runs past the frame's end.
    case headerOutOfBounds(headerLength: Int, frameLength: Int)
    case checksumMismatch(requestID: UInt64, stored: UInt64, computed: UInt64)
    /// The header bytes are not the message the operation expects.
    case badHeader(operation: String, requestID: UInt64, detail: String)
    /// A frame to encode exceeds the limits.
    case encodeTooLarge(bytes: Int, limit: Int)
    /// The receiver holds too many bytes of unfinished frames across its connections to take more from this one.
    case bufferLimit(held: Int)

    public var description: String {
        switch self {
        case .frameTooLarge(let length, let limit): return "frame of \(length) bytes is over the limit of \(limit)"
        case .frameTooShort(let length): return "frame length \(length) is shorter than the 28-byte fixed header"
        case .badMagic(let found): return "not an Elastic Stream frame: magic 0x\(String(found, radix: 16))"
        case .unsupportedVersion(let version): return "frame version \(version) is not supported"
        case .unknownFlags(let flags): return "frame flags 0x\(String(flags, radix: 16)) hold unknown bits"
        case .reservedNotZero(let offset): return "frame reserved field at byte \(offset) is not zero"
        case .headerTooLarge(let length, let limit): return "frame header of \(length) bytes is over the limit of \(limit)"
        case .headerOutOfBounds(let headerLength, let frameLength):
            return "frame header length \(headerLength) runs past the frame's \(frameLength) bytes"
        case .checksumMismatch(let requestID, let stored, let computed):
            return "frame \(requestID) checksum mismatch: stored 0x\(String(stored, radix: 16)), "
                + "computed 0x\(String(computed, radix: 16))"
        case .badHeader(let operation, let requestID, let detail):
            return "frame \(requestID) (\(operation)) header does not decode: \(detail)"
        case .encodeTooLarge(let bytes, let limit): return "frame to send is \(bytes) bytes, over the limit of \(limit)"
        case .bufferLimit(let held):
            return "the server holds too many bytes of unfinished frames (\(held) from this connection); try again later"
        }
    }
}
