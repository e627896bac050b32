import CSupport
import SwiftProtobuf

/// Byte positions of a frame's fixed part (see docs/protocol.md). All integers are big-endian (network order).
public enum FrameLayout {
    static let length = 0  // u32 bytes after this field
    static let magic = 4  // u8
    static let version = 5  // u8
    static let opcode = 6  // u16
    static let flags = 8  // u8
    static let reserved = 9  // u8 + u16, zero
    static let requestID = 12  // u64
    static let headerLength = 20  // u32
    static let checksum = 24  // u64 XXH3-64 of header and payload
    /// The fixed part, length prefix included.
    public static let size = 32
    public static let magicValue: UInt8 = 0xE5
    public static let currentVersion: UInt8 = 1
}

/// Bounds on frames, checked on both sides: a sender refuses to build a frame over them, a receiver refuses the
/// length prefix before it allocates anything.
public struct FrameLimits: Sendable, Hashable {
    /// Whole frame, length prefix included.
    public var maxFrameBytes: Int
    /// The protobuf header.
    public var maxHeaderBytes: Int

    public init(maxFrameBytes: Int = 16 << 20, maxHeaderBytes: Int = 1 << 20) {
        self.maxFrameBytes = maxFrameBytes
        self.maxHeaderBytes = maxHeaderBytes
    }

    public static let `default` = FrameLimits()
}

/// One decoded frame. Header and payload share one allocation.
public struct Frame: Sendable, Hashable {
    /// The operation code as sent; `operation` is nil for a code this build does not know (answer
    /// UNSUPPORTED_OPERATION, do not drop the connection).
    public let rawOperation: UInt16
    public let flags: FrameFlags
    public let requestID: UInt64
    /// Header bytes then payload bytes.
    let body: [UInt8]
    let headerLength: Int

    public var operation: OperationCode? { OperationCode(rawValue: rawOperation) }
    public var isResponse: Bool { flags.contains(.response) }

    public init(operation: OperationCode, flags: FrameFlags = [], requestID: UInt64, header: [UInt8],
                payload: [UInt8] = []) {
        self.init(rawOperation: operation.rawValue, flags: flags, requestID: requestID, header: header,
                  payload: payload)
    }

    public init(rawOperation: UInt16, flags: FrameFlags, requestID: UInt64, header: [UInt8], payload: [UInt8]) {
        self.rawOperation = rawOperation
        self.flags = flags
        self.requestID = requestID
        self.body = header + payload
        self.headerLength = header.count
    }

    init(rawOperation: UInt16, flags: FrameFlags, requestID: UInt64, body: [UInt8], headerLength: Int) {
        self.rawOperation = rawOperation
        self.flags = flags
        self.requestID = requestID
        self.body = body
        self.headerLength = headerLength
    }

    /// A request whose header is `message`.
    public init(request operation: OperationCode, id: UInt64, header message: some SwiftProtobuf.Message,
                payload: [UInt8] = []) throws(WireError) {
        self.init(operation: operation, requestID: id, header: try Self.serialize(message, operation, id),
                  payload: payload)
    }

    /// The response to `request` whose header is `message`.
    public init(responseTo request: Frame, header message: some SwiftProtobuf.Message, payload: [UInt8] = [],
                endOfStream: Bool = true) throws(WireError) {
        let name = request.operation?.description ?? "0x\(String(request.rawOperation, radix: 16))"
        self.init(rawOperation: request.rawOperation, flags: endOfStream ? [.response, .endOfStream] : [.response],
                  requestID: request.requestID, header: try Self.serialize(message, name, request.requestID),
                  payload: payload)
    }

    /// The error response to `request`: its header is `status`.
    public init(errorTo request: Frame, status: Elasticstream_V1_Status) {
        let header = (try? status.serializedBytes() as [UInt8]) ?? []
        self.init(rawOperation: request.rawOperation, flags: [.response, .endOfStream, .error],
                  requestID: request.requestID, header: header, payload: [])
    }

    private static func serialize(_ message: some SwiftProtobuf.Message, _ operation: CustomStringConvertible,
                                  _ id: UInt64) throws(WireError) -> [UInt8] {
        do {
            return try message.serializedBytes()
        } catch {
            throw .badHeader(operation: "\(operation)", requestID: id, detail: "\(error)")
        }
    }

    /// Calls `body` with the header bytes.
    public func withHeader<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try self.body.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[..<headerLength])) }
    }

    /// Calls `body` with the payload bytes, without copying them.
    public func withPayload<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try self.body.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[headerLength...])) }
    }

    public var header: ArraySlice<UInt8> { body[..<headerLength] }
    public var payload: ArraySlice<UInt8> { body[headerLength...] }

    /// The header decoded as `type`; `.badHeader` names the operation and request when it does not decode.
    public func header<M: SwiftProtobuf.Message>(as type: M.Type) throws(WireError) -> M {
        do {
            return try M(serializedBytes: Array(header))
        } catch {
            let name = operation?.description ?? "0x\(String(rawOperation, radix: 16))"
            throw .badHeader(operation: name, requestID: requestID, detail: "\(error)")
        }
    }

    /// Bytes of the encoded frame.
    public var encodedSize: Int { FrameLayout.size + body.count }

    /// The frame's wire bytes.
    public func encoded(limits: FrameLimits = .default) throws(WireError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: encodedSize)
        let result = out.withUnsafeMutableBytes { buffer in
            Result { () throws(WireError) -> Int in try encode(into: buffer, limits: limits) }
        }
        _ = try result.get()
        return out
    }

    /// Writes the frame into `buffer`; returns its length.
    public func encode(into buffer: UnsafeMutableRawBufferPointer, limits: FrameLimits = .default)
        throws(WireError) -> Int
    {
        guard encodedSize <= limits.maxFrameBytes else {
            throw .encodeTooLarge(bytes: encodedSize, limit: limits.maxFrameBytes)
        }
        guard headerLength <= limits.maxHeaderBytes else {
            throw .headerTooLarge(length: headerLength, limit: limits.maxHeaderBytes)
        }
        precondition(buffer.count >= encodedSize, "buffer of \(buffer.count) bytes for a frame of \(encodedSize)")
        body.withUnsafeBytes { bytes in
            FrameHeaderCodec.write(
                into: buffer, operation: rawOperation, flags: flags, requestID: requestID, headerLength: headerLength,
                checksum: cs_xxh3_64(bytes.baseAddress, bytes.count, 0), bodyLength: bytes.count)
            if bytes.count > 0 {
                (buffer.baseAddress! + FrameLayout.size).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            }
        }
        return encodedSize
    }
}

/// The fixed 32 bytes of a frame, parsed and checked.
public struct FrameHeader: Sendable, Hashable {
    /// Bytes after the length prefix.
    public let length: Int
    public let rawOperation: UInt16
    public let flags: FrameFlags
    public let requestID: UInt64
    public let headerLength: Int
    public let checksum: UInt64

    public var bodyLength: Int { length + 4 - FrameLayout.size }
}

/// Reads and writes the fixed part of a frame.
public enum FrameHeaderCodec {
    /// The length prefix alone, checked against the limit: the first thing a receiver reads.
    @inline(__always)
    public static func frameLength(_ bytes: UnsafeRawBufferPointer, limits: FrameLimits) throws(WireError) -> Int {
        let length = Int(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)))
        guard length + 4 <= limits.maxFrameBytes else {
            throw .frameTooLarge(length: length + 4, limit: limits.maxFrameBytes)
        }
        guard length + 4 >= FrameLayout.size else { throw .frameTooShort(length: length) }
        return length
    }

    /// Checks the fields of the fixed part that the first `bytes.count` bytes hold (all of them from 32 bytes on):
    /// a receiver calls it as bytes arrive, so that garbage is refused before it waits for a declared body.
    public static func checkPrefix(_ bytes: UnsafeRawBufferPointer, limits: FrameLimits) throws(WireError) {
        if bytes.count >= FrameLayout.size {
            _ = try parse(bytes, limits: limits)
            return
        }
        if bytes.count >= 4 { _ = try frameLength(bytes, limits: limits) }
        if bytes.count > FrameLayout.magic, bytes[FrameLayout.magic] != FrameLayout.magicValue {
            throw .badMagic(found: bytes[FrameLayout.magic])
        }
        if bytes.count > FrameLayout.version, bytes[FrameLayout.version] != FrameLayout.currentVersion {
            throw .unsupportedVersion(bytes[FrameLayout.version])
        }
        if bytes.count > FrameLayout.flags {
            let flags = FrameFlags(rawValue: bytes[FrameLayout.flags])
            guard FrameFlags.known.isSuperset(of: flags) else { throw .unknownFlags(flags.rawValue) }
        }
    }

    /// Parses the 32-byte fixed part at the start of `bytes`.
    @inline(__always)
    public static func parse(_ bytes: UnsafeRawBufferPointer, limits: FrameLimits) throws(WireError) -> FrameHeader {
        precondition(bytes.count >= FrameLayout.size)
        let length = try frameLength(bytes, limits: limits)
        let magic = bytes[FrameLayout.magic]
        guard magic == FrameLayout.magicValue else { throw .badMagic(found: magic) }
        let version = bytes[FrameLayout.version]
        guard version == FrameLayout.currentVersion else { throw .unsupportedVersion(version) }
        let flags = FrameFlags(rawValue: bytes[FrameLayout.flags])
        guard FrameFlags.known.isSuperset(of: flags) else { throw .unknownFlags(flags.rawValue) }
        guard bytes[FrameLayout.reserved] == 0, bytes[FrameLayout.reserved + 1] == 0,
              bytes[FrameLayout.reserved + 2] == 0
        else { throw .reservedNotZero(offset: FrameLayout.reserved) }
        let headerLength = Int(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: FrameLayout.headerLength,
                                                                     as: UInt32.self)))
        guard headerLength <= limits.maxHeaderBytes else {
            throw .headerTooLarge(length: headerLength, limit: limits.maxHeaderBytes)
        }
        guard headerLength <= length + 4 - FrameLayout.size else {
            throw .headerOutOfBounds(headerLength: headerLength, frameLength: length + 4)
        }
        return FrameHeader(
            length: length,
            rawOperation: UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: FrameLayout.opcode, as: UInt16.self)),
            flags: flags,
            requestID: UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: FrameLayout.requestID, as: UInt64.self)),
            headerLength: headerLength,
            checksum: UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: FrameLayout.checksum, as: UInt64.self)))
    }

    static func write(into b: UnsafeMutableRawBufferPointer, operation: UInt16, flags: FrameFlags, requestID: UInt64,
                      headerLength: Int, checksum: UInt64, bodyLength: Int) {
        b.storeBytes(of: UInt32(FrameLayout.size - 4 + bodyLength).bigEndian, toByteOffset: FrameLayout.length,
                     as: UInt32.self)
        b[FrameLayout.magic] = FrameLayout.magicValue
        b[FrameLayout.version] = FrameLayout.currentVersion
        b.storeBytes(of: operation.bigEndian, toByteOffset: FrameLayout.opcode, as: UInt16.self)
        b[FrameLayout.flags] = flags.rawValue
        b[FrameLayout.reserved] = 0
        b[FrameLayout.reserved + 1] = 0
        b[FrameLayout.reserved + 2] = 0
        b.storeBytes(of: requestID.bigEndian, toByteOffset: FrameLayout.requestID, as: UInt64.self)
        b.storeBytes(of: UInt32(headerLength).bigEndian, toByteOffset: FrameLayout.headerLength, as: UInt32.self)
        b.storeBytes(of: checksum.bigEndian, toByteOffset: FrameLayout.checksum, as: UInt64.self)
    }
}

extension Frame {
    /// The wire bytes of a request built in one allocation (the payload copied once, checksummed once), for senders
    /// that do not need a `Frame` value: the writer's appends.
    public static func encodeRequest(operation: OperationCode, requestID: UInt64, header: [UInt8],
                                     payload: UnsafeRawBufferPointer, limits: FrameLimits = .default)
        throws(WireError) -> [UInt8]
    {
        let bodyLength = header.count + payload.count
        let total = FrameLayout.size + bodyLength
        guard total <= limits.maxFrameBytes else { throw .encodeTooLarge(bytes: total, limit: limits.maxFrameBytes) }
        guard header.count <= limits.maxHeaderBytes else {
            throw .headerTooLarge(length: header.count, limit: limits.maxHeaderBytes)
        }
        return [UInt8](unsafeUninitializedCapacity: total) { buffer, count in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            let body = raw.baseAddress! + FrameLayout.size
            header.withUnsafeBytes { if !$0.isEmpty { body.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            if !payload.isEmpty { (body + header.count).copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
            FrameHeaderCodec.write(into: raw, operation: operation.rawValue, flags: [], requestID: requestID,
                                   headerLength: header.count, checksum: cs_xxh3_64(body, bodyLength, 0),
                                   bodyLength: bodyLength)
            count = total
        }
    }

    /// Sets the request id of encoded wire bytes (the checksum covers header and payload only, so it stays valid).
    public static func setRequestID(_ id: UInt64, in wire: inout [UInt8]) {
        precondition(wire.count >= FrameLayout.size, "not a frame")
        wire.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: id.bigEndian, toByteOffset: FrameLayout.requestID, as: UInt64.self)
        }
    }
}
