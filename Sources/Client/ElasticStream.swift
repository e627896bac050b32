import PlacementDriverClient
import Platform
import Reactor
import Records

/// The client for code that does not run on a reactor shard: it owns a one-shard reactor (one thread, sleeping when
/// idle) and runs an `ElasticStreamClient` there; every call hops onto that shard and back. Safe to share between
/// tasks and threads. Code already on a shard should use `ElasticStreamClient` directly (no hop).
public final class ElasticStream: Sendable {
    let reactor: Reactor
    let client: ShardBound<ElasticStreamClient>

    /// `pd`: the placement driver members, "host:port". `cpu`: the CPU of the client's thread (not pinned).
    public init(pd: [String], configuration: ClientConfiguration = ClientConfiguration(), cpu: Int = 0) async throws {
        reactor = try Reactor(configuration: ReactorConfiguration(
            cpus: [cpu], pinThreads: false, pollDuration: .microseconds(20), stallThreshold: nil, bufferCount: 4,
            bufferSizeBytes: 64 << 10, useHugePages: false, drainTimeout: .milliseconds(500)))
        client = try await reactor.run(on: 0) { context in
            ShardBound(ElasticStreamClient(pd: pd, on: context, configuration: configuration))
        }
    }

    /// Runs `body` with the client on its shard.
    func onShard<T: Sendable>(_ body: @escaping @Sendable (ElasticStreamClient) async throws -> T) async throws -> T {
        let client = client
        return try await reactor.run(on: 0) { _ in try await body(client.value) }
    }

    public func createStream(replicas: Int = 3, ackCount: Int = 2) async throws -> StreamRecord {
        try await onShard { try await $0.createStream(replicas: replicas, ackCount: ackCount) }
    }

    /// Opens `id` for writing (fencing any earlier writer).
    public func openStream(_ id: UInt64) async throws -> ElasticStreamWriter {
        let writer = try await onShard { ShardBound(try await $0.openStream(id)) }
        return ElasticStreamWriter(owner: self, writer: writer, streamID: id)
    }

    public func describeStream(_ id: UInt64) async throws -> StreamRecord {
        try await onShard { try await $0.describeStream(id) }
    }

    public func listStreams() async throws -> [StreamRecord] { try await onShard { try await $0.listStreams() } }

    public func ranges(of id: UInt64) async throws -> [RangeRecord] { try await onShard { try await $0.ranges(of: id) } }

    public func deleteStream(_ id: UInt64) async throws { try await onShard { try await $0.deleteStream(id) } }

    public func read(stream id: UInt64, from offset: UInt64, maxBytes: Int = 1 << 20) async throws -> [ReadRecord] {
        try await onShard { try await $0.read(stream: id, from: offset, maxBytes: maxBytes) }
    }

    /// Every record from `offset` on, in order, waiting for new ones. Each `next()` takes a record the tail already
    /// fetched on the client's shard (it fetches about a megabyte at a time), so nothing piles up when the consumer
    /// is slow.
    public func tail(stream id: UInt64, from offset: UInt64) -> ElasticStreamTail {
        ElasticStreamTail(owner: self, streamID: id, start: offset)
    }

    /// Closes the client's connections and stops its thread.
    public func shutdown() async {
        let client = client
        _ = try? await reactor.run(on: 0) { _ in await client.value.close() }
        reactor.shutdown()
    }

}

/// A stream's writer for code off the reactor (see `ElasticStream`): each call hops to the client's shard.
public final class ElasticStreamWriter: Sendable {
    let owner: ElasticStream
    let writer: ShardBound<StreamWriter>
    public let streamID: UInt64

    init(owner: ElasticStream, writer: ShardBound<StreamWriter>, streamID: UInt64) {
        self.owner = owner
        self.writer = writer
        self.streamID = streamID
    }

    func onShard<T: Sendable>(_ body: @escaping @Sendable (StreamWriter) async throws -> T) async throws -> T {
        let writer = writer
        return try await owner.reactor.run(on: 0) { _ in try await body(writer.value) }
    }

    /// Appends `records` as one batch; the offset of the first once `ackCount` replicas hold them.
    public func append(_ records: [Record]) async throws -> UInt64 {
        try await onShard { try await $0.append(records) }
    }

    public func read(from offset: UInt64, maxBytes: Int = 1 << 20) async throws -> [ReadRecord] {
        try await onShard { try await $0.read(from: offset, maxBytes: maxBytes) }
    }

    public func trim(before offset: UInt64) async throws { try await onShard { try await $0.trim(before: offset) } }

    /// Drains the appends in flight and seals the range being written.
    public func close() async { _ = try? await onShard { await $0.close() } }

    public func delete() async throws { try await onShard { try await $0.delete() } }
}

/// A tail for code off the reactor (see `ElasticStream.tail`): an AsyncSequence of every record from an offset on.
public struct ElasticStreamTail: AsyncSequence, Sendable {
    public typealias Element = ReadRecord
    let owner: ElasticStream
    let streamID: UInt64
    let start: UInt64

    public struct AsyncIterator: AsyncIteratorProtocol {
        let owner: ElasticStream
        let state: ShardBound<State>

        final class State {
            var iterator: TailSequence.AsyncIterator?
            let streamID: UInt64
            let start: UInt64
            init(streamID: UInt64, start: UInt64) {
                self.streamID = streamID
                self.start = start
            }
        }

        public mutating func next() async throws -> ReadRecord? {
            let state = state
            return try await owner.onShard { client in
                if state.value.iterator == nil {
                    state.value.iterator = client.tail(stream: state.value.streamID, from: state.value.start)
                        .makeAsyncIterator()
                }
                return try await state.value.iterator!.next()
            }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(owner: owner, state: ShardBound(AsyncIterator.State(streamID: streamID, start: start)))
    }
}
