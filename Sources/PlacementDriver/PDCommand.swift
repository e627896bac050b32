import Foundation
import SwiftProtobuf
import Wire

public typealias StreamRecord = Elasticstream_V1_Stream
public typealias RangeRecord = Elasticstream_V1_Range
public typealias ServerRecord = Elasticstream_V1_RangeServer
public typealias ObjectRecord = Elasticstream_V1_ObjectMetadata
public typealias WatchEvent = Elasticstream_V1_WatchEvent

/// One change to the placement driver's state, as it travels in a Raft entry: the operation, the leader's clock
/// when it was proposed (so that every member decides placement and liveness identically), and the request, as its
/// protobuf message. Layout: u16 operation code, i64 milliseconds since the epoch, then the request bytes.
public struct PDCommand: Sendable, Hashable {
    public var operation: OperationCode
    public var nowMilliseconds: Int64
    public var request: [UInt8]

    public init(_ operation: OperationCode, now: Int64, request: some SwiftProtobuf.Message) throws {
        self.operation = operation
        nowMilliseconds = now
        self.request = try request.serializedBytes()
    }

    public init(operation: OperationCode, now: Int64, request: [UInt8]) {
        self.operation = operation
        nowMilliseconds = now
        self.request = request
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(10 + request.count)
        withUnsafeBytes(of: operation.rawValue.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: nowMilliseconds.littleEndian) { bytes += $0 }
        bytes += request
        return bytes
    }

    public init?(_ bytes: [UInt8]) {
        guard bytes.count >= 10 else { return nil }
        let code = UInt16(bytes[0]) | UInt16(bytes[1]) << 8
        guard let operation = OperationCode(rawValue: code) else { return nil }
        self.operation = operation
        nowMilliseconds = Int64(bitPattern: bytes[2..<10].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        request = Array(bytes[10...])
    }
}

/// A refused operation: the wire protocol's error code and a message for people.
public struct PDError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: ErrorCode
    public var message: String
    /// With NOT_LEADER: the member believed to lead (0: unknown).
    public var leader: UInt64 = 0

    public init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }

    public var status: Status {
        var status = Status()
        status.code = code
        status.message = message
        status.leaderID = leader
        return status
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
