import Wire

public typealias StreamRecord = Elasticstream_V1_Stream
public typealias RangeRecord = Elasticstream_V1_Range
public typealias ServerRecord = Elasticstream_V1_RangeServer
public typealias ObjectRecord = Elasticstream_V1_ObjectMetadata
public typealias WatchEvent = Elasticstream_V1_WatchEvent

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
