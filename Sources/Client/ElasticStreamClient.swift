import PlacementDriverClient
import Platform
import Reactor
import Records
import SwiftProtobuf
import Transport
import Wire

/// A client of an Elastic Stream cluster, on one shard: streams are created, opened (for writing, fencing any earlier
/// writer), read and tailed through it. It finds the placement driver's leader and talks to each range server's
/// owner shard directly. Shard-bound: make it and use it on one shard of a reactor.
public final class ElasticStreamClient {
    public let context: ShardContext
    public let configuration: ClientConfiguration
    public let pd: PDClient
    private var servers: [String: RPCClient] = [:]
    private var readers: [UInt64: StreamReader] = [:]
    static let maxCachedReaders = 64
    private var closed = false

    public init(pd addresses: [String], on context: ShardContext, configuration: ClientConfiguration = ClientConfiguration()) {
        self.context = context
        self.configuration = configuration
        pd = PDClient(addresses: addresses, on: context, timeout: configuration.placementDriverTimeout)
    }

    public func close() async {
        closed = true
        for server in servers.values { await server.close() }
        servers = [:]
        await pd.close()
    }

    /// The connection to one shard of a range server.
    func server(_ address: String) -> RPCClient {
        if let client = servers[address] { return client }
        let client = RPCClient(address: address, on: context)
        servers[address] = client
        return client
    }

    /// The address of the shard of `server` that owns the range.
    static func address(of server: Elasticstream_V1_RangeServer, for range: RangeRecord) -> String? {
        guard !server.shardAddresses.isEmpty else { return nil }
        let shard = RangeRouting.shard(streamID: range.streamID, rangeIndex: range.index,
                                       shardCount: server.shardAddresses.count)
        return server.shardAddresses[shard]
    }

    func call<Response: SwiftProtobuf.Message>(
        _ operation: OperationCode, _ request: some SwiftProtobuf.Message, as type: Response.Type = Response.self
    ) async throws(ClientError) -> Response {
        guard !closed else { throw .closed }
        let response: Response
        do {
            response = try await pd.call(operation, request, as: type)
        } catch {
            throw .from(error)
        }
        do {
            try Self.check(response)
        } catch {
            throw .placementDriver(PDError(.dataCorrupted, "\(operation) answered out-of-range numbers: \(error)"))
        }
        return response
    }

    /// The placement driver's numbers are checked like any peer's before the writer and readers compute with them.
    static func check(_ response: some SwiftProtobuf.Message) throws(FieldError) {
        func stream(_ record: StreamRecord) throws(FieldError) {
            try FieldError.offset(record.startOffset, "stream.start_offset")
            // The writer indexes its replicas' confirmed ends by the ack count.
            guard (1...16).contains(record.replicaCount), (1...record.replicaCount).contains(record.ackCount) else {
                throw FieldError("stream.ack_count", "is \(record.ackCount) with replica_count \(record.replicaCount)")
            }
        }
        func ranges(_ list: [RangeRecord]) throws(FieldError) {
            for (i, range) in list.enumerated() { try range.validate("ranges[\(i)]") }
        }
        switch response {
        case let answer as Elasticstream_V1_OpenStreamResponse:
            try stream(answer.stream)
            try ranges(answer.ranges)
        case let answer as Elasticstream_V1_ListRangesResponse: try ranges(answer.ranges)
        case let answer as Elasticstream_V1_CreateRangeResponse: try answer.range.validate()
        case let answer as Elasticstream_V1_SealRangeResponse: try answer.range.validate()
        case let answer as Elasticstream_V1_DescribeStreamResponse: try stream(answer.stream)
        case let answer as Elasticstream_V1_CreateStreamResponse: try stream(answer.stream)
        default: break
        }
    }

    // MARK: - Streams

    /// Creates a stream whose ranges have `replicas` replicas, `ackCount` of which confirm each append.
    public func createStream(replicas: Int = 3, ackCount: Int = 2, retention: Duration? = nil)
        async throws(ClientError) -> StreamRecord
    {
        guard (1...16).contains(replicas), (1...replicas).contains(ackCount) else {
            throw .invalidArgument("replicas \(replicas) and ackCount \(ackCount): need 1 ≤ ackCount ≤ replicas ≤ 16")
        }
        var request = Elasticstream_V1_CreateStreamRequest()
        request.stream.replicaCount = UInt32(replicas)
        request.stream.ackCount = UInt32(ackCount)
        if let retention { request.stream.retentionMs = UInt64(retention.components.seconds * 1000) }
        return try await call(.createStream, request, as: Elasticstream_V1_CreateStreamResponse.self).stream
    }

    /// Opens `id` for writing: takes a new epoch from the placement driver (fencing every earlier writer), seals the
    /// range an earlier writer left open at the end a quorum of its replicas confirms, and starts the next range.
    public func openStream(_ id: UInt64) async throws(ClientError) -> StreamWriter {
        try await StreamWriter.open(id, client: self)
    }

    public func describeStream(_ id: UInt64) async throws(ClientError) -> StreamRecord {
        var request = Elasticstream_V1_DescribeStreamRequest()
        request.streamID = id
        return try await call(.describeStream, request, as: Elasticstream_V1_DescribeStreamResponse.self).stream
    }

    /// Every stream, in id order (deleted ones included, marked).
    public func listStreams() async throws(ClientError) -> [StreamRecord] {
        var all: [StreamRecord] = []
        var after: UInt64 = 0
        while true {
            var request = Elasticstream_V1_ListStreamsRequest()
            request.afterStreamID = after
            request.limit = 1000
            let page = try await call(.listStreams, request, as: Elasticstream_V1_ListStreamsResponse.self).streams
            all += page
            guard page.count == 1000, let last = page.last else { return all }
            after = last.streamID
        }
    }

    /// Every range of a stream, in index order (page after page: a long-lived stream may have very many).
    public func ranges(of id: UInt64) async throws(ClientError) -> [RangeRecord] {
        var all: [RangeRecord] = []
        var next: UInt32 = 0
        while true {
            var request = Elasticstream_V1_ListRangesRequest()
            request.streamID = id
            request.startIndex = next
            let page = try await call(.listRanges, request, as: Elasticstream_V1_ListRangesResponse.self)
            all += page.ranges
            guard page.more, let last = page.ranges.last else { return all }
            next = last.index + 1
        }
    }

    /// One page of a stream's ranges, from the one that holds `startOffset` (the first after it when the offset
    /// was trimmed away; the last range when it is at or past the stream's end).
    public func rangePage(of id: UInt64, startOffset: UInt64, limit: Int = 1_000) async throws(ClientError)
        -> [RangeRecord]
    {
        var request = Elasticstream_V1_ListRangesRequest()
        request.streamID = id
        request.startOffset = startOffset
        request.limit = UInt32(clamping: limit)
        return try await call(.listRanges, request, as: Elasticstream_V1_ListRangesResponse.self).ranges
    }

    public func describeCluster() async throws(ClientError) -> Elasticstream_V1_DescribeClusterResponse {
        try await call(.describeCluster, Elasticstream_V1_DescribeClusterRequest(),
                       as: Elasticstream_V1_DescribeClusterResponse.self)
    }

    /// Deletes a stream (opening it first: deleting fences its writer).
    public func deleteStream(_ id: UInt64) async throws(ClientError) {
        var open = Elasticstream_V1_OpenStreamRequest()
        open.streamID = id
        let stream = try await call(.openStream, open, as: Elasticstream_V1_OpenStreamResponse.self).stream
        var request = Elasticstream_V1_DeleteStreamRequest()
        request.streamID = id
        request.epoch = stream.epoch
        _ = try await call(.deleteStream, request, as: Elasticstream_V1_DeleteStreamResponse.self)
    }

    // MARK: - Reads

    /// Records from `offset` on, up to about `maxBytes` (at least one batch when there is one), from whichever
    /// replica has them; reads span ranges. Empty at the stream's end.
    public func read(stream id: UInt64, from offset: UInt64, maxBytes: Int = 1 << 20) async throws(ClientError)
        -> [ReadRecord]
    {
        // One reader per stream is kept (a few at most), so reading on through many ranges does not ask the
        // placement driver again for every call.
        let reader: StreamReader
        if let known = readers[id] {
            reader = known
        } else {
            if readers.count >= Self.maxCachedReaders { readers = [:] }
            reader = StreamReader(client: self, streamID: id)
            readers[id] = reader
        }
        return try await reader.read(from: offset, maxBytes: maxBytes, wait: .zero)
    }

    /// Every record from `offset` on, in order, exactly once, waiting for new ones at the end.
    public func tail(stream id: UInt64, from offset: UInt64) -> TailSequence {
        TailSequence(reader: ShardBound(StreamReader(client: self, streamID: id)), start: offset)
    }
}

@available(*, unavailable)
extension ElasticStreamClient: Sendable {}
