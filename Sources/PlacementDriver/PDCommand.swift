import Foundation
import SwiftProtobuf
import Wire

/// One change to the placement driver's state, as it travels in a Raft entry: the operation, the leader's clock
/// when it was proposed (so that every member decides placement and liveness identically), the client's id and the
/// call's sequence number (a retried call carries the same pair, and is answered from the first one's result instead
/// of being applied again; 0 and 0 for a caller that does not retry), and the request as its protobuf message.
/// Layout: u16 operation code, i64 milliseconds since the epoch, u64 client id, u64 sequence, the request bytes.
public struct PDCommand: Sendable, Hashable {
    public var operation: OperationCode
    public var nowMilliseconds: Int64
    public var clientID: UInt64
    public var sequence: UInt64
    public var request: [UInt8]

    static let prefixBytes = 26

    public init(_ operation: OperationCode, now: Int64, request: some SwiftProtobuf.Message, clientID: UInt64 = 0,
                sequence: UInt64 = 0) throws {
        self.operation = operation
        nowMilliseconds = now
        self.clientID = clientID
        self.sequence = sequence
        self.request = try request.serializedBytes()
    }

    public init(operation: OperationCode, now: Int64, request: [UInt8], clientID: UInt64 = 0, sequence: UInt64 = 0) {
        self.operation = operation
        nowMilliseconds = now
        self.clientID = clientID
        self.sequence = sequence
        self.request = request
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.prefixBytes + request.count)
        withUnsafeBytes(of: operation.rawValue.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: nowMilliseconds.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: clientID.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: sequence.littleEndian) { bytes += $0 }
        bytes += request
        return bytes
    }

    public init?(_ bytes: [UInt8]) {
        guard bytes.count >= Self.prefixBytes else { return nil }
        func u64(_ at: Int) -> UInt64 { bytes[at..<(at + 8)].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) } }
        let code = UInt16(bytes[0]) | UInt16(bytes[1]) << 8
        guard let operation = OperationCode(rawValue: code) else { return nil }
        self.operation = operation
        nowMilliseconds = Int64(bitPattern: u64(2))
        clientID = u64(10)
        sequence = u64(18)
        request = Array(bytes[Self.prefixBytes...])
    }
}

/// What an applied command answered.
public enum PDResult: Sendable {
    case stream(StreamRecord, ranges: [RangeRecord] = [])
    case range(RangeRecord)
    case serverID(UInt64)
    case firstID(UInt64)
    case done
    case failed(PDError)
}

extension PDResult {
    /// u8 tag, then: stream (length-prefixed protobuf, u64 range count, length-prefixed ranges), range (length-prefixed
    /// protobuf), server id or first id (u64), failed (u32 code, length-prefixed message), done (nothing).
    func encoded() throws -> [UInt8] {
        var out: [UInt8] = []
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func message(_ m: some SwiftProtobuf.Message) throws {
            let bytes: [UInt8] = try m.serializedBytes()
            u64(UInt64(bytes.count))
            out += bytes
        }
        switch self {
        case .stream(let stream, let ranges):
            out.append(1)
            try message(stream)
            u64(UInt64(ranges.count))
            for range in ranges { try message(range) }
        case .range(let range):
            out.append(2)
            try message(range)
        case .serverID(let id):
            out.append(3)
            u64(id)
        case .firstID(let id):
            out.append(4)
            u64(id)
        case .done:
            out.append(5)
        case .failed(let error):
            out.append(6)
            u64(UInt64(error.code.rawValue))
            let text = Array(error.message.utf8)
            u64(UInt64(text.count))
            out += text
        }
        return out
    }

    init(decoding bytes: [UInt8]) throws {
        var offset = 1
        func u64() throws -> UInt64 {
            guard offset + 8 <= bytes.count else { throw PDError(.dataCorrupted, "result truncated") }
            defer { offset += 8 }
            return bytes[offset..<(offset + 8)].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        func chunk() throws -> [UInt8] {
            let length = Int(try u64())
            guard length >= 0, offset + length <= bytes.count else { throw PDError(.dataCorrupted, "result truncated") }
            defer { offset += length }
            return Array(bytes[offset..<(offset + length)])
        }
        guard let tag = bytes.first else { throw PDError(.dataCorrupted, "empty result") }
        switch tag {
        case 1:
            let stream = try StreamRecord(serializedBytes: try chunk())
            var ranges: [RangeRecord] = []
            for _ in 0..<(try u64()) { ranges.append(try RangeRecord(serializedBytes: try chunk())) }
            self = .stream(stream, ranges: ranges)
        case 2: self = .range(try RangeRecord(serializedBytes: try chunk()))
        case 3: self = .serverID(try u64())
        case 4: self = .firstID(try u64())
        case 5: self = .done
        case 6:
            let code = ErrorCode(rawValue: Int(try u64())) ?? .unknown
            self = .failed(PDError(code, String(decoding: try chunk(), as: UTF8.self)))
        default:
            throw PDError(.dataCorrupted, "unknown result tag \(tag)")
        }
    }
}
