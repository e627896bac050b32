import PlacementDriverClient
import Platform
import Reactor
import Records
import Transport
import Wire

/// Reads one stream across its ranges: finds the range holding an offset (asking the placement driver again when
/// it does not know it), fetches from a replica of that range, and moves to another replica when one fails or lacks
/// the records. Shard-bound.
final class StreamReader {
    let client: ElasticStreamClient
    let streamID: UInt64
    /// The ranges known, in index order: a window of the stream's ranges (pages from the placement driver), not
    /// necessarily all of them. Ranges wholly below what this reader reads are dropped past `maxCachedRanges`.
    private(set) var ranges: [RangeRecord] = []
    /// The writer's own reads stop at its acknowledged end in the open range (records past it may still move).
    var openRangeLimit: (() -> UInt64)?
    /// Which replica to ask first, per range index (moved on failure).
    private var preferred: [UInt32: Int] = [:]
    /// When the placement driver was last asked (a tail on an open range asks again at least this often).
    private var lastRefresh: Instant?
    static let maxCachedRanges = 4_096

    init(client: ElasticStreamClient, streamID: UInt64) {
        self.client = client
        self.streamID = streamID
    }

    /// Adds (or updates) ranges the caller learned, keeping index order.
    func merge(_ learned: [RangeRecord]) {
        guard !learned.isEmpty else { return }
        var byIndex: [UInt32: RangeRecord] = [:]
        for range in ranges { byIndex[range.index] = range }
        for range in learned where range.streamID == streamID { byIndex[range.index] = range }
        ranges = byIndex.values.sorted { $0.index < $1.index }
    }

    /// Asks the placement driver for the page of ranges from the one that holds `offset` (or the stream's last
    /// range when `offset` is at or past its end).
    func refresh(from offset: UInt64) async throws(ClientError) {
        let page = try await client.rangePage(of: streamID, startOffset: offset)
        lastRefresh = client.context.now
        if ranges.count > Self.maxCachedRanges {
            ranges.removeAll { $0.sealed && $0.endOffset <= offset }
            if ranges.count > Self.maxCachedRanges { ranges = [] }
        }
        // A range the placement driver no longer lists below the page (trimmed) must not be read.
        if let first = page.first { ranges.removeAll { $0.index < first.index && !($0.sealed && $0.endOffset <= offset) } }
        merge(page)
    }

    /// The known range that holds `offset`: ranges are contiguous in offsets, so a binary search finds it.
    private func range(containing offset: UInt64) -> RangeRecord? {
        var low = 0
        var high = ranges.count
        while low < high {
            let mid = (low + high) / 2
            if ranges[mid].sealed && ranges[mid].endOffset <= offset { low = mid + 1 } else { high = mid }
        }
        guard low < ranges.count, offset >= ranges[low].startOffset else { return nil }
        // An open range that is not the stream's last known one may have been sealed since: ask again.
        if !ranges[low].sealed && low != ranges.count - 1 { return nil }
        return ranges[low]
    }

    /// Records from `offset` on (about `maxBytes`); with `wait`, a read at the end of the open range waits that long
    /// for new records. Empty at the stream's end.
    func read(from offset: UInt64, maxBytes: Int, wait: Duration) async throws(ClientError) -> [ReadRecord] {
        var refreshed = false
        let deadline = client.context.now + client.configuration.requestTimeout + wait
        var lastError: ClientError?
        while client.context.now < deadline {
            if !refreshed && (ranges.isEmpty || range(containing: offset) == nil) {
                try await refresh(from: offset)
                refreshed = true
            }
            guard let range = range(containing: offset) else {
                // Just refreshed from the offset: the page starts at the range holding it, or the first after it
                // (the offset was trimmed away), or is the stream's last range (the offset is at or past the end).
                if let first = ranges.first(where: { !$0.sealed || $0.endOffset > offset }), offset < first.startOffset {
                    throw .offsetOutOfRange("stream \(streamID) starts at \(first.startOffset), after \(offset)")
                }
                if let last = ranges.last, last.sealed, offset == last.endOffset {
                    // The stream's end, with no next range yet (its writer is failing over, or gone).
                    if wait > .zero { try? await client.context.sleep(for: min(wait, .milliseconds(100))) }
                    return []
                }
                if ranges.isEmpty { return [] }
                throw .offsetOutOfRange("offset \(offset) is past the end of stream \(streamID)")
            }
            var limit: UInt64 = range.sealed ? range.endOffset : 0
            if !range.sealed, range.index == ranges.last?.index, let openRangeLimit {
                limit = openRangeLimit()
                if offset >= limit { return [] }
            }
            let servers = range.servers
            guard !servers.isEmpty else { throw .unavailable("range \(range.index) of stream \(streamID) has no replicas") }
            let first = preferred[range.index] ?? 0
            var sawEmpty = false
            var missingOpen = 0
            var retry = false
            replicas: for attempt in 0..<servers.count {
                let which = (first + attempt) % servers.count
                guard let address = ElasticStreamClient.address(of: servers[which], for: range) else { continue }
                var request = Elasticstream_V1_FetchRequest()
                request.streamID = streamID
                request.rangeIndex = range.index
                request.startOffset = offset
                request.endOffset = limit
                request.maxBytes = UInt32(clamping: maxBytes)
                // A reader other than the writer sees only what the writer acknowledged. Below a sealed range's
                // end every record is committed: a replica that missed the seal still serves them.
                request.committedOnly = openRangeLimit == nil && !range.sealed
                request.maxWaitMs = range.sealed ? 0 : UInt32(wait.components.seconds * 1000
                    + wait.components.attoseconds / 1_000_000_000_000_000)
                let answer = await client.server(address).call(.fetch, header: request,
                                                               timeout: client.configuration.readReplicaTimeout + wait)
                switch answer {
                case .success(let frame):
                    let records: [ReadRecord]
                    do {
                        records = try Self.decode(frame, stream: streamID, range: range.index, from: offset,
                                                  below: limit == 0 ? .max : limit)
                    } catch {
                        lastError = error
                        preferred[range.index] = (which + 1) % servers.count
                        continue
                    }
                    if records.isEmpty && range.sealed && offset < range.endOffset {
                        // This replica has not got (or repaired) these records yet: ask another, and tell it the
                        // seal, which starts its repair (it may have missed the seal while down).
                        sawEmpty = true
                        tellSeal(range, to: address)
                        preferred[range.index] = (which + 1) % servers.count
                        continue
                    }
                    if records.isEmpty && !range.sealed && limit > 0 && offset < limit {
                        // The writer's own read below its acknowledged end: ack_count replicas hold these records,
                        // this one (a replica the append has not reached yet) does not; ask another.
                        sawEmpty = true
                        preferred[range.index] = (which + 1) % servers.count
                        continue
                    }
                    preferred[range.index] = which
                    if records.isEmpty && !range.sealed && !refreshed && openRangeLimit == nil,
                       await mayHaveBeenSealed(range, at: address) {
                        // The range was sealed meanwhile (its writer moved on): learn where the stream goes next.
                        try await refresh(from: offset)
                        refreshed = true
                        if self.range(containing: offset)?.index != range.index || self.range(containing: offset)?.sealed == true {
                            retry = true
                            break replicas
                        }
                    }
                    return records
                case .failure(let error):
                    lastError = .from(error)
                    if case .refused(let code, _) = error, code == .offsetOutOfRange {
                        throw .offsetOutOfRange("offset \(offset) of stream \(streamID) was trimmed")
                    }
                    if case .refused(.rangeNotFound, _) = error, !range.sealed { missingOpen += 1 }
                    preferred[range.index] = (which + 1) % servers.count
                }
            }
            if retry { continue }
            if missingOpen > 0 && !range.sealed {
                // No reachable replica holds a record of this open range (those without it never got it: its writer
                // died before creating it there). Nothing in it can be acknowledged: it is the stream's end for now,
                // until a writer or the servers seal it.
                if !refreshed {
                    try await refresh(from: offset)
                    refreshed = true
                    if self.range(containing: offset)?.sealed != false { continue }
                }
                if wait > .zero { try? await client.context.sleep(for: min(wait, .milliseconds(100))) }
                return []
            }
            if sawEmpty { lastError = .unavailable("no replica of range \(range.index) has offset \(offset) yet") }
            // Every replica failed: the range may have moved on (sealed, new range); look again shortly.
            refreshed = false
            try? await client.context.sleep(for: .milliseconds(50))
        }
        throw lastError ?? .unavailable("no replica of stream \(streamID) answered for offset \(offset)")
    }

    /// Whether the replica at `address` says `range` is sealed (or does not answer plainly): only then is the
    /// placement driver asked again, so an idle tail costs a range server a DESCRIBE_RANGE per wait, not the
    /// placement driver a read.
    private func mayHaveBeenSealed(_ range: RangeRecord, at address: String) async -> Bool {
        // The replica may not know of a seal (it missed it while down, or its writer died and the system sealed the
        // range): the placement driver is asked at least every `tailRefreshInterval` too.
        if let lastRefresh, client.context.now - lastRefresh >= client.configuration.tailRefreshInterval { return true }
        var request = Elasticstream_V1_DescribeRangeRequest()
        request.streamID = range.streamID
        request.rangeIndex = range.index
        let answer = await client.server(address).call(.describeRange, header: request,
                                                       timeout: client.configuration.requestTimeout)
        guard case .success(let frame) = answer,
              let description = try? frame.header(as: Elasticstream_V1_DescribeRangeResponse.self)
        else { return true }
        return description.range.sealed
    }

    /// Sends the placement driver's seal of `range` to a replica that lacks records below it (best effort): the
    /// replica seals and repairs from its peers.
    private func tellSeal(_ range: RangeRecord, to address: String) {
        var request = Elasticstream_V1_SealRangeRequest()
        request.range = range
        request.epoch = range.epoch
        guard let header = try? request.serializedBytes() as [UInt8] else { return }
        client.server(address).send(.sealRange, headerBytes: header, payload: [],
                                    timeout: client.configuration.requestTimeout) { _ in }
    }

    /// The records of a FETCH answer at or after `offset` and below `end`, every batch checked: its checksum, and
    /// that it is the batch asked for (this stream and range, the first holding `offset`, each starting where the one
    /// before ended). A replica that answers with anything else is treated as damaged, and another is asked.
    static func decode(_ frame: Frame, stream: UInt64, range: UInt32, from offset: UInt64, below end: UInt64)
        throws(ClientError) -> [ReadRecord]
    {
        let payload = Array(frame.payload)
        var records: [ReadRecord] = []
        let result: Result<Void, ClientError> = payload.withUnsafeBytes { raw in
            var position = 0
            var expected: UInt64?
            while position < raw.count {
                let rest = UnsafeRawBufferPointer(rebasing: raw[position...])
                do {
                    let length = try RecordBatchView.batchLength(of: rest)
                    guard length <= rest.count else { return .failure(.server(code: .dataCorrupted, message: "truncated batch")) }
                    let view = try RecordBatchView(validating: UnsafeRawBufferPointer(rebasing: rest[..<length]))
                    let inPlace = view.streamID == stream && view.rangeIndex == range
                        && (expected.map { view.baseOffset == $0 } ?? (view.baseOffset <= offset && offset < view.endOffset))
                    guard inPlace else {
                        return .failure(.server(code: .dataCorrupted, message: "a fetched batch is not the one asked for: stream \(view.streamID) range \(view.rangeIndex) [\(view.baseOffset), \(view.endOffset)) for offset \(expected ?? offset) of stream \(stream) range \(range)"))
                    }
                    expected = view.endOffset
                    let batch = RecordBatch(view)
                    for (i, record) in batch.records.enumerated() {
                        let at = batch.baseOffset + UInt64(i)
                        if at >= offset && at < end { records.append(ReadRecord(offset: at, record: record)) }
                    }
                    position += length
                } catch {
                    return .failure(.server(code: .dataCorrupted, message: "a fetched batch fails its checks: \(error)"))
                }
            }
            return .success(())
        }
        try result.get()
        return records
    }
}

@available(*, unavailable)
extension StreamReader: Sendable {}

/// Every record of a stream from an offset on, in order, exactly once: at the end it waits for new records, and it
/// follows the stream from range to range. Iterate it on the shard of the client that made it.
public struct TailSequence: AsyncSequence {
    public typealias Element = ReadRecord
    let reader: ShardBound<StreamReader>
    let start: UInt64

    public struct AsyncIterator: AsyncIteratorProtocol {
        let reader: ShardBound<StreamReader>
        var next: UInt64
        var buffered: [ReadRecord] = []
        var position = 0

        public mutating func next() async throws -> ReadRecord? {
            var pause = Duration.milliseconds(50)
            while position >= buffered.count {
                do {
                    buffered = try await reader.value.read(from: next, maxBytes: 1 << 20, wait: .milliseconds(500))
                    pause = .milliseconds(50)
                } catch {
                    // A tail follows the stream through failures: replicas or the placement driver down for a
                    // while are waited out (the cluster heals); only errors that cannot heal end it.
                    guard Self.transient(error) else { throw error }
                    buffered = []
                    try? await reader.value.client.context.sleep(for: pause)
                    pause = Swift.min(pause * 2, .seconds(1))
                }
                position = 0
            }
            let record = buffered[position]
            position += 1
            next = record.offset + 1
            return record
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(reader: reader, next: start) }
}

extension TailSequence.AsyncIterator {
    /// Failures a tail waits out: unreachable or slow replicas, a placement driver without a leader or quorum, a
    /// replica that is stopping or lacks records yet.
    static func transient(_ error: ClientError) -> Bool {
        switch error {
        case .unavailable: return true
        case .placementDriver(let pd): return [.timeout, .noLeader, .notLeader, .shuttingDown, .unknown].contains(pd.code)
        case .server(let code, _):
            return [.shuttingDown, .tooManyRequests, .timeout, .rangeNotFound, .dataCorrupted, .unknown].contains(code)
        default: return false
        }
    }
}
