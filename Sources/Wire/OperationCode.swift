/// What a frame asks for. The high byte groups operations: 0x00 connection, 0x10 range server, 0x20 placement driver,
/// 0x30 Raft peers. A response carries its request's code with the response flag set.
public enum OperationCode: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    // Connection level, served by every process.
    case ping = 0x0001
    case goAway = 0x0002
    case heartbeat = 0x0003
    // Range servers.
    case append = 0x1001
    case fetch = 0x1002
    case createRange = 0x1003
    case sealRange = 0x1004
    case describeRange = 0x1005
    // Placement driver.
    case createStream = 0x2001
    case openStream = 0x2002
    case describeStream = 0x2003
    case updateStream = 0x2004
    case trimStream = 0x2005
    case deleteStream = 0x2006
    case listRanges = 0x2007
    case pdCreateRange = 0x2008
    case pdSealRange = 0x2009
    case registerRangeServer = 0x200A
    case rangeServerHeartbeat = 0x200B
    case listRangeServers = 0x200C
    case allocateID = 0x200D
    case commitObject = 0x200E
    case listObjects = 0x200F
    case watch = 0x2010
    case describeCluster = 0x2011
    case listStreams = 0x2012
    // Raft peers (placement driver members).
    case appendEntries = 0x3001
    case requestVote = 0x3002
    case installSnapshot = 0x3003
    case timeoutNow = 0x3004
    /// One Raft message of any kind in the frame's payload, in the core's binary form (docs/protocol.md). The
    /// placement driver's members use it; the four codes above are kept for the protobuf forms.
    case raftMessage = 0x3005

    public var description: String {
        switch self {
        case .ping: "PING"
        case .goAway: "GOAWAY"
        case .heartbeat: "HEARTBEAT"
        case .append: "APPEND"
        case .fetch: "FETCH"
        case .createRange: "CREATE_RANGE"
        case .sealRange: "SEAL_RANGE"
        case .describeRange: "DESCRIBE_RANGE"
        case .createStream: "CREATE_STREAM"
        case .openStream: "OPEN_STREAM"
        case .describeStream: "DESCRIBE_STREAM"
        case .updateStream: "UPDATE_STREAM"
        case .trimStream: "TRIM_STREAM"
        case .deleteStream: "DELETE_STREAM"
        case .listRanges: "LIST_RANGES"
        case .pdCreateRange: "PD_CREATE_RANGE"
        case .pdSealRange: "PD_SEAL_RANGE"
        case .registerRangeServer: "REGISTER_RANGE_SERVER"
        case .rangeServerHeartbeat: "RANGE_SERVER_HEARTBEAT"
        case .listRangeServers: "LIST_RANGE_SERVERS"
        case .allocateID: "ALLOCATE_ID"
        case .commitObject: "COMMIT_OBJECT"
        case .listObjects: "LIST_OBJECTS"
        case .watch: "WATCH"
        case .describeCluster: "DESCRIBE_CLUSTER"
        case .listStreams: "LIST_STREAMS"
        case .appendEntries: "APPEND_ENTRIES"
        case .requestVote: "REQUEST_VOTE"
        case .installSnapshot: "INSTALL_SNAPSHOT"
        case .timeoutNow: "TIMEOUT_NOW"
        case .raftMessage: "RAFT_MESSAGE"
        }
    }

    /// Whether a frame of this operation carries raw record batches after its header.
    public var carriesRecords: Bool { self == .append || self == .fetch }
}

/// The flags byte of a frame.
public struct FrameFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The frame answers the request with the same id.
    public static let response = FrameFlags(rawValue: 0x01)
    /// The last frame of a streamed response (WATCH, a long FETCH). A one-frame response sets it too.
    public static let endOfStream = FrameFlags(rawValue: 0x02)
    /// The header is a `Status` describing why the request failed; there is no payload.
    public static let error = FrameFlags(rawValue: 0x04)
    /// Bits a version 1 peer may set; any other bit is a protocol error.
    public static let known: FrameFlags = [.response, .endOfStream, .error]
}
