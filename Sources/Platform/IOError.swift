/// What the reactor (or the simulator) was doing when an operation failed.
public enum IOOperation: String, Sendable, Hashable {
    case ringSetup, registerBuffers, eventfd, pin
    case open, close, read, write, fdatasync, fsync, fallocate, rename
    case socket, listen, accept, connect, recv, send
    case timeout, cancel, nop, crossShard, allocate
}

/// A failed operation: what was attempted, on what, and why. Every I/O call above the reactor throws this and only
/// this, so callers can act on the cause (retry on `.cancelled`, report the path on `.system`).
public struct IOError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The kernel refused with this errno.
        case system(errno: Int32)
        /// A buffer address, length or file offset was not a multiple of the required alignment.
        case unaligned(what: String, value: UInt64, alignment: Int)
        /// The shard already has its maximum of operations in flight.
        case tooManyInFlight(limit: Int)
        /// The operation was cancelled (task cancellation, or shutdown).
        case cancelled
        /// The reactor is shutting down or stopped and takes no new work.
        case shutdown
        /// A deadline passed before the operation finished.
        case timedOut
        /// The caller passed something unusable.
        case invalidArgument(String)
        /// The call was made from a thread that is not the shard owning the resource.
        case wrongShard(expected: Int, actual: Int)
    }

    public let operation: IOOperation
    public let kind: Kind
    /// What the operation was applied to: a path, a descriptor, a peer address.
    public let target: String

    public init(_ operation: IOOperation, _ kind: Kind, target: String = "") {
        self.operation = operation
        self.kind = kind
        self.target = target
    }

    /// The errno when the kernel refused, nil otherwise.
    public var errno: Int32? {
        if case .system(let code) = kind { return code }
        return nil
    }

    public var description: String {
        let on = target.isEmpty ? "" : " on \(target)"
        switch kind {
        case .system(let code): return "\(operation.rawValue)\(on) failed: \(errnoName(code)) (errno \(code))"
        case .unaligned(let what, let value, let alignment):
            return "\(operation.rawValue)\(on): \(what) \(value) is not a multiple of \(alignment)"
        case .tooManyInFlight(let limit):
            return "\(operation.rawValue)\(on): the shard already has \(limit) operations in flight"
        case .cancelled: return "\(operation.rawValue)\(on) was cancelled"
        case .shutdown: return "\(operation.rawValue)\(on): the reactor is shutting down"
        case .timedOut: return "\(operation.rawValue)\(on) timed out"
        case .invalidArgument(let why): return "\(operation.rawValue)\(on): invalid argument: \(why)"
        case .wrongShard(let expected, let actual):
            return "\(operation.rawValue)\(on): called on shard \(actual), but the resource belongs to shard \(expected)"
        }
    }
}

/// Short names for the errnos storage and network code meets, so that logs read without a lookup table.
func errnoName(_ code: Int32) -> String {
    switch code {
    case 1: return "EPERM"
    case 2: return "ENOENT"
    case 4: return "EINTR"
    case 5: return "EIO"
    case 9: return "EBADF"
    case 11: return "EAGAIN"
    case 12: return "ENOMEM"
    case 13: return "EACCES"
    case 16: return "EBUSY"
    case 17: return "EEXIST"
    case 21: return "EISDIR"
    case 22: return "EINVAL"
    case 24: return "EMFILE"
    case 27: return "EFBIG"
    case 28: return "ENOSPC"
    case 32: return "EPIPE"
    case 62: return "ETIME"
    case 95: return "EOPNOTSUPP"
    case 98: return "EADDRINUSE"
    case 104: return "ECONNRESET"
    case 110: return "ETIMEDOUT"
    case 111: return "ECONNREFUSED"
    case 122: return "EDQUOT"
    case 125: return "ECANCELED"
    default: return "errno"
    }
}
