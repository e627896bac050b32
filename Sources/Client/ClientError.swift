import PlacementDriverClient
import Transport
import Wire

/// Why a client call failed, with what the caller should do about it.
public enum ClientError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A newer writer opened the stream (or sealed its range): this writer must stop.
    case fenced(String)
    /// The placement driver refused or did not answer.
    case placementDriver(PDError)
    /// A range server refused (its code says why).
    case server(code: ErrorCode, message: String)
    /// No replica (or not enough of them) could be reached in time.
    case unavailable(String)
    /// The offset is below the stream's start or past its end.
    case offsetOutOfRange(String)
    case invalidArgument(String)
    /// The stream handle (or the client) was closed.
    case closed

    public var description: String {
        switch self {
        case .fenced(let detail): "fenced: a newer writer owns the stream (\(detail))"
        case .placementDriver(let error): "placement driver: \(error)"
        case .server(let code, let message): "range server: \(code): \(message)"
        case .unavailable(let detail): "unavailable: \(detail)"
        case .offsetOutOfRange(let detail): "offset out of range: \(detail)"
        case .invalidArgument(let detail): "invalid argument: \(detail)"
        case .closed: "the stream or client is closed"
        }
    }

    static func from(_ error: PDError) -> ClientError {
        switch error.code {
        case .epochFenced, .rangeEndMismatch: .fenced(error.message)
        case .offsetOutOfRange: .offsetOutOfRange(error.message)
        default: .placementDriver(error)
        }
    }

    static func from(_ error: CallError) -> ClientError {
        switch error {
        case .refused(let code, let message): .server(code: code, message: message)
        default: .unavailable("\(error)")
        }
    }
}

/// One record read back, with its offset in the stream.
public struct ReadRecord: Sendable, Hashable {
    public let offset: UInt64
    public let record: Record
}

/// How a client behaves; the defaults suit a production writer.
public struct ClientConfiguration: Sendable {
    /// How long one call to the placement driver may take, retries included.
    public var placementDriverTimeout: Duration = .seconds(10)
    /// A replica that does not confirm an append within this is treated as failed.
    public var appendTimeout: Duration = .seconds(3)
    /// Appends not yet acknowledged per stream: past it, `append` waits.
    public var maxInFlightAppends = 1024
    /// The largest batch one append may be (the range servers' default log entry limit is about 1 MiB).
    public var maxBatchBytes = 1_000_000
    /// Bytes of appends not yet acknowledged per stream: past it, `append` waits.
    public var maxInFlightBytes = 64 << 20
    /// A replica this many bytes behind the acknowledged end makes the writer move to a new range.
    public var maxReplicaLagBytes = 32 << 20
    /// Timeout of one control request to a range server (create, seal, fence).
    public var requestTimeout: Duration = .seconds(5)
    /// How long a read waits for one replica (beyond its own wait for new records) before it asks the next.
    public var readReplicaTimeout: Duration = .seconds(2)
    /// How long a failover may keep trying (the placement driver electing, servers coming back) before the writer
    /// gives up and fails its appends.
    public var failoverTimeout: Duration = .seconds(30)
    /// How long fencing, creating and sealing a range waits for one replica before going on without it (once enough
    /// others answered): a stopped or dead server delays opening a stream or starting a range by at most this.
    public var replicaSetupTimeout: Duration = .milliseconds(500)
    /// An idle writer tells its replicas it is alive this often (an APPEND without records): range servers seal an
    /// open range whose writer is silent past their `writer_lease`.
    public var keepaliveInterval: Duration = .seconds(1)
    /// A tail waiting at the end of an open range asks the placement driver at least this often whether the range
    /// was sealed (its replicas may not know).
    public var tailRefreshInterval: Duration = .seconds(2)

    public init() {}
}

import Records
