import Platform

/// Why the store could not do what was asked, with what a user needs to act on it.
public enum StoreError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The disk refused (full, failing); the data of the failed operation is not durable.
    case io(IOError)
    /// A WAL entry in the middle of otherwise valid data fails its checks: never skipped silently.
    case corruption(file: String, position: UInt64, detail: String)
    /// An entry is larger than a WAL write may be.
    case entryTooLarge(bytes: Int, limit: Int)
    /// The WAL stopped after a write failure: nothing more is accepted until it is reopened.
    case walFailed(String)
    case invalidConfiguration(String)
    case rangeNotFound(RangeKey)
    /// A request contradicts the range's state (created with another start, sealed at another end).
    case rangeConflict(key: RangeKey, detail: String)

    public var description: String {
        switch self {
        case .io(let error): return "store I/O failed: \(error)"
        case .corruption(let file, let position, let detail):
            return "WAL corruption in \(file) at byte \(position): \(detail)"
        case .entryTooLarge(let bytes, let limit): return "WAL entry of \(bytes) bytes is over the limit of \(limit)"
        case .walFailed(let why): return "the WAL stopped accepting writes: \(why)"
        case .invalidConfiguration(let why): return "invalid store configuration: \(why)"
        case .rangeNotFound(let key): return "no replica of \(key) on this shard"
        case .rangeConflict(let key, let detail): return "\(key): \(detail)"
        }
    }
}
