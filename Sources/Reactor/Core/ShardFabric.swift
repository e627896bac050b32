import CSupport
import Synchronization

/// The shards of one reactor and the channels between them: `shardCount * shardCount` single-producer
/// single-consumer channels, one per ordered pair (the diagonal is unused). It also decides when a stopping reactor
/// is quiescent: no shard busy, no message in any channel.
final class ShardFabric: @unchecked Sendable {
    let shardCount: Int
    private let channels: [SPSCChannel<ShardMessage>]
    // Unretained views of the channels and shards (kept alive by the arrays beside them). The hot paths reach them
    // through these, because retaining an object that two cores share makes its reference count bounce between
    // their caches on every message.
    private let channelRefs: [Unmanaged<SPSCChannel<ShardMessage>>]
    private var shardRefs: [Unmanaged<Shard>] = []
    /// Filled once, before any shard thread starts; read-only afterwards.
    var shards: [Shard] = [] {
        didSet { shardRefs = shards.map { Unmanaged.passUnretained($0) } }
    }

    /// Bumped by a stopping shard each time it turns busy again; see `isQuiescent()`.
    let activity = Atomic<UInt64>(0)
    /// Set once the stopping reactor is quiescent (or a shard gave up waiting): every shard may exit.
    let quiesced = Atomic<Bool>(false)
    /// What a fatal storage failure does to the process (`Reactor.onFatalFailure`); nil: the failing component stops
    /// itself and the process goes on.
    let fatalHandler = Mutex<(@Sendable (String) -> Void)?>(nil)

    init(shardCount: Int, channelCapacity: Int) {
        self.shardCount = shardCount
        channels = (0..<(shardCount * shardCount)).map { _ in SPSCChannel(capacity: channelCapacity) }
        channelRefs = channels.map { Unmanaged.passUnretained($0) }
    }

    @inline(__always)
    func withChannel<R>(from source: Int, to target: Int, _ body: (SPSCChannel<ShardMessage>) -> R) -> R {
        channelRefs[source &* shardCount &+ target]._withUnsafeGuaranteedRef(body)
    }

    @inline(__always)
    func withShard<R>(_ index: Int, _ body: (Shard) -> R) -> R {
        shardRefs[index]._withUnsafeGuaranteedRef(body)
    }

    /// Whether every shard is idle and every channel empty, with no shard turning busy during the look. A stopping
    /// shard marks itself busy (and bumps `activity`) before it takes a message, and takes none while marked idle,
    /// so an unchanged `activity` across the scan means nobody moved: nothing can wake the reactor again.
    func isQuiescent() -> Bool {
        let before = activity.load(ordering: .sequentiallyConsistent)
        for shard in shards where !shard.idle.load(ordering: .sequentiallyConsistent) { return false }
        for source in 0..<shardCount {
            for target in 0..<shardCount where source != target {
                if withChannel(from: source, to: target, { $0.hasPending() }) { return false }
            }
        }
        return activity.load(ordering: .sequentiallyConsistent) == before
    }

    /// After every shard thread has exited: empties the channels and returns how many messages were left.
    func drainLeftovers() -> Int {
        var left = 0
        for source in 0..<shardCount {
            for target in 0..<shardCount where source != target {
                left += withChannel(from: source, to: target) { $0.drain(limit: .max) { _ in } }
            }
        }
        return left
    }
}

/// A shard-bound value carried through a closure that the compiler must treat as Sendable (a cancellation handler, a
/// task or call started on the same shard) but that only ever touches the value on the value's shard
/// (`Shard.post`, `ShardContext.spawn`, `Reactor.run`). In debug builds, a value made on a shard checks that it is
/// read on that shard (as swift-nio's `NIOLoopBound` checks its event loop); one made off every shard (a test's
/// main thread) is not checked.
public struct ShardBound<Value>: @unchecked Sendable {
    #if DEBUG
    private let wrapped: Value
    private let owner: UnsafeMutableRawPointer?

    public var value: Value {
        if let owner {
            precondition(cs_current_shard_object() == owner,
                         "a ShardBound value made on one shard is used on another thread (shard \(cs_current_shard()))")
        }
        return wrapped
    }

    public init(_ value: Value) {
        wrapped = value
        owner = cs_current_shard_object()
    }
    #else
    public let value: Value
    public init(_ value: Value) { self.value = value }
    #endif
}
