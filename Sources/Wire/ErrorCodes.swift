/// Short names for the generated protocol types.
public typealias Status = Elasticstream_V1_Status
public typealias ErrorCode = Elasticstream_V1_ErrorCode

extension Elasticstream_V1_ErrorCode {
    /// What the code means, and what a client should do about it.
    public var meaning: String {
        switch self {
        case .ok: "success"
        case .unknown: "an unexpected server error; retry with backoff"
        case .badRequest: "the request header is missing fields or does not decode; do not retry as is"
        case .unsupportedOperation: "the server does not serve this operation code"
        case .checksumMismatch: "a payload's checksum failed (frame or record batch); resend"
        case .tooManyRequests: "the connection's in-flight request or byte bound is reached; wait for answers"
        case .timeout: "the server gave up within the request's timeout"
        case .shuttingDown: "the server is draining; reconnect elsewhere"
        case .invalidArgument: "a field is out of range (a count, a replica number); do not retry as is"
        case .rangeNotFound: "this range server holds no replica of the range"
        case .rangeSealed: "the range is sealed; append to the stream's next range"
        case .rangeAlreadyExists: "the range was already created here"
        case .appendAlreadyCommitted: "the records were already durable here; a retried append succeeds"
        case .appendPending: "an append of these offsets is already in flight here"
        case .appendOvertaken: "the append starts past the range's end: an earlier append is missing"
        case .offsetOutOfRange: "the offset is outside the range or the stream"
        case .noNewRecords: "nothing past the offset arrived within the wait"
        case .dataCorrupted: "stored data failed its checksum; read from another replica"
        case .storageFull: "the server's disk is full; the append was not stored"
        case .storageFailed: "the server's disk failed the write; the append was not stored"
        case .streamNotFound: "no stream has this id"
        case .streamDeleted: "the stream was deleted"
        case .epochFenced: "a newer writer opened the stream; this writer must stop"
        case .previousRangeNotSealed: "a range can be created only after the previous one is sealed"
        case .rangeEndMismatch: "the range is already sealed at a different end"
        case .notEnoughServers: "too few healthy range servers to place the replicas"
        case .notLeader: "this member does not lead; the status names the leader when known"
        case .noLeader: "an election is in progress; retry shortly"
        case .serverNotFound: "no range server has this id"
        case .objectConflict: "an object overlapping this one is already committed"
        case .revisionCompacted: "the watch revision is older than the retained history; list again"
        case .UNRECOGNIZED(let value): "an error code this client does not know (\(value))"
        }
    }
}
