// The narrow interfaces through which everything above the reactor reaches time, files and connections.
//
// The reactor implements them with io_uring on a shard; a deterministic simulator implements them for tests. No
// io_uring type appears here. Implementations are bound to one shard: their values are not Sendable and must be used
// on the shard that made them.

/// A point on a monotonic clock, in nanoseconds since an arbitrary origin.
public struct Instant: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var nanoseconds: UInt64
    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }
    public static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }
    public static func + (a: Instant, d: Duration) -> Instant { Instant(nanoseconds: a.nanoseconds &+ d.wholeNanoseconds) }
    public static func - (a: Instant, b: Instant) -> Duration {
        a >= b ? .nanoseconds(Int64(a.nanoseconds - b.nanoseconds)) : .nanoseconds(-Int64(b.nanoseconds - a.nanoseconds))
    }
    public var description: String { "\(nanoseconds)ns" }
}

extension Duration {
    /// The duration in whole nanoseconds, clamped at zero and at UInt64.max.
    public var wholeNanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        if seconds < 0 { return 0 }
        let (ns, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .max }
        return ns &+ UInt64(max(0, attoseconds) / 1_000_000_000)
    }
}

/// Time as a shard sees it.
public protocol ShardClock {
    var now: Instant { get }
    /// Suspends for at least `duration`. Throws `.cancelled` when the task is cancelled first.
    func sleep(for duration: Duration) async throws(IOError)
    /// Suspends until `deadline` has passed.
    func sleep(until deadline: Instant) async throws(IOError)
}

/// How to open a file.
public struct FileOpenOptions: Sendable, Hashable {
    public var create: Bool
    public var truncate: Bool
    public var readOnly: Bool
    /// Bypass the page cache: buffers, lengths and offsets must then be multiples of `directAlignment`.
    public var direct: Bool
    public var permissions: UInt32

    public init(create: Bool = false, truncate: Bool = false, readOnly: Bool = false, direct: Bool = true,
                permissions: UInt32 = 0o644) {
        self.create = create
        self.truncate = truncate
        self.readOnly = readOnly
        self.direct = direct
        self.permissions = permissions
    }

    /// The alignment O_DIRECT I/O requires of buffers, lengths and offsets here.
    public static let directAlignment = 4096
}

/// A file opened on one shard. Reads and writes at explicit offsets; no shared file position.
public protocol ShardFile: AnyObject {
    var path: String { get }
    /// Reads up to `buffer.count` bytes at `offset`; returns how many were read (0 at end of file).
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) async throws(IOError) -> Int
    /// Writes `buffer` at `offset`; with `durable`, the write returns only once the data is on stable storage
    /// (RWF_DSYNC). Returns the number of bytes written.
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, durable: Bool) async throws(IOError) -> Int
    /// Makes every completed write durable (fdatasync).
    func sync() async throws(IOError)
    /// Reserves `length` bytes at `offset` on disk (fallocate).
    func allocate(at offset: UInt64, length: UInt64) async throws(IOError)
    func close() async throws(IOError)
}

/// A connected byte stream on one shard.
public protocol ShardConnection: AnyObject {
    var peer: String { get }
    /// Receives at most `buffer.count` bytes; returns 0 when the peer closed.
    func receive(into buffer: UnsafeMutableRawBufferPointer) async throws(IOError) -> Int
    /// Sends all of `buffer`.
    func send(_ buffer: UnsafeRawBufferPointer) async throws(IOError)
    func close() async throws(IOError)
}

/// A listening socket on one shard.
public protocol ShardListener: AnyObject {
    associatedtype Connection: ShardConnection
    var port: UInt16 { get }
    func accept() async throws(IOError) -> Connection
    func close() async throws(IOError)
}

/// Everything a shard offers the code above it: a clock, files and connections.
public protocol ShardEnvironment: ShardClock {
    associatedtype File: ShardFile
    associatedtype Listener: ShardListener
    var shardIndex: Int { get }
    func open(_ path: String, options: FileOpenOptions) async throws(IOError) -> File
    func listen(host: String, port: UInt16) throws(IOError) -> Listener
    func connect(host: String, port: UInt16) async throws(IOError) -> Listener.Connection
}
