import Foundation
import SwiftProtobuf
import Wire

/// The placement driver's replicated state: streams, their ranges, range servers, committed objects and id
/// allocators, changed only by applying `PDCommand`s in log order. Deterministic: the same commands give the same
/// state on every member (time comes from the command, never from the member's clock).
public struct PDStateMachine: Sendable {
    public struct Settings: Sendable, Hashable {
        /// A server whose last heartbeat is older than this is not healthy: no new replicas go to it.
        public var heartbeatTimeoutMilliseconds: Int64
        /// Change events kept for watchers; an older `after_revision` gets REVISION_COMPACTED.
        public var watchHistory: Int

        public init(heartbeatTimeoutMilliseconds: Int64 = 10_000, watchHistory: Int = 10_000) {
            self.heartbeatTimeoutMilliseconds = heartbeatTimeoutMilliseconds
            self.watchHistory = watchHistory
        }
    }

    public let settings: Settings
    public private(set) var streams: [UInt64: StreamRecord] = [:]
    /// Per stream, in index order (trimmed ranges are dropped from the front).
    public private(set) var ranges: [UInt64: [RangeRecord]] = [:]
    public private(set) var servers: [UInt64: ServerRecord] = [:]
    public private(set) var objects: [UInt64: [ObjectRecord]] = [:]
    private var nextID: [Elasticstream_V1_IdKind: UInt64] = [.stream: 1, .rangeServer: 1, .object: 1]
    /// The Raft index of the last applied command.
    public private(set) var revision: UInt64 = 0
    private var events: [WatchEvent] = []

    public init(settings: Settings = Settings()) {
        self.settings = settings
    }

    // MARK: - Applying

    /// Applies the command of the Raft entry at `index`. A refused command changes nothing and answers `.failed`.
    /// A command whose client and sequence were applied before is answered with the first one's result and changes
    /// nothing: a retried call is never applied twice.
    public mutating func apply(_ command: PDCommand, at index: UInt64) -> PDResult {
        revision = max(revision, index)
        if command.clientID != 0, let earlier = sessions[command.clientID]?.results[command.sequence] {
            touch(command.clientID, at: index)
            return earlier
        }
        let result: PDResult
        do {
            result = try applyThrowing(command)
        } catch let error as PDError {
            result = .failed(error)
        } catch {
            result = .failed(PDError(.badRequest, "the request does not decode: \(error)"))
        }
        if command.clientID != 0 { remember(result, client: command.clientID, sequence: command.sequence, at: index) }
        return result
    }

    /// What a client's recent calls answered. Bounded: the newest `resultsPerClient` per client, and the
    /// `maxSessions` clients heard from last (evictions are decided from the log alone, so every member agrees).
    struct Session: Sendable {
        var results: [UInt64: PDResult] = [:]
        var lastUsed: UInt64 = 0
    }

    private var sessions: [UInt64: Session] = [:]
    static let resultsPerClient = 4096
    static let maxSessions = 10_000

    private mutating func remember(_ result: PDResult, client: UInt64, sequence: UInt64, at index: UInt64) {
        // In place: a copy of the session would copy its results on every call.
        sessions[client, default: Session()].results[sequence] = result
        touch(client, at: index)
        if sessions[client]!.results.count > 2 * Self.resultsPerClient {
            let floor = sessions[client]!.results.keys.sorted(by: >)[Self.resultsPerClient - 1]
            sessions[client]!.results = sessions[client]!.results.filter { $0.key >= floor }
        }
        if sessions.count > Self.maxSessions { evictOldestSession() }
    }

    /// (log index, client) in apply order, so that the least recently used session is found from the front in
    /// constant amortized time (a scan of 10,000 sessions on every write would cap the placement driver's rate).
    /// Entries whose client was used again later are stale and skipped. Every member applies the same log, so every
    /// member evicts the same session: the one with the oldest last use (log indexes are unique).
    private var usage: [SessionUse] = []
    private var usageHead = 0

    struct SessionUse: Sendable {
        let index: UInt64
        let client: UInt64
    }

    private mutating func touch(_ client: UInt64, at index: UInt64) {
        sessions[client]!.lastUsed = index
        usage.append(SessionUse(index: index, client: client))
        // Bounded: rebuilt from the live sessions when stale entries dominate.
        if usage.count - usageHead > 4 * max(sessions.count, 1_024) { rebuildUsage() }
    }

    private mutating func rebuildUsage() {
        usage = sessions.map { SessionUse(index: $0.value.lastUsed, client: $0.key) }
            .sorted { ($0.index, $0.client) < ($1.index, $1.client) }
        usageHead = 0
    }

    private mutating func evictOldestSession() {
        while usageHead < usage.count {
            let use = usage[usageHead]
            usageHead += 1
            if let session = sessions[use.client], session.lastUsed == use.index {
                sessions[use.client] = nil
                break
            }
        }
        if usageHead > 4_096 && usageHead * 2 > usage.count {
            usage.removeFirst(usageHead)
            usageHead = 0
        }
    }

    /// Clients with remembered results (for tests and status).
    public var sessionCount: Int { sessions.count }

    private mutating func applyThrowing(_ command: PDCommand) throws -> PDResult {
        // Total: every number is checked before it is used (`PDCommand.validate`); what the checks let through
        // cannot trap below.
        try command.validate()
        let now = command.nowMilliseconds
        let bytes = command.request
        switch command.operation {
        case .createStream:
            return try createStream(Elasticstream_V1_CreateStreamRequest(serializedBytes: bytes).stream)
        case .openStream:
            let request = try Elasticstream_V1_OpenStreamRequest(serializedBytes: bytes)
            return try openStream(request.streamID, epoch: request.epoch)
        case .updateStream:
            return try updateStream(Elasticstream_V1_UpdateStreamRequest(serializedBytes: bytes))
        case .trimStream:
            let request = try Elasticstream_V1_TrimStreamRequest(serializedBytes: bytes)
            return try trimStream(request.streamID, epoch: request.epoch, to: request.startOffset)
        case .deleteStream:
            let request = try Elasticstream_V1_DeleteStreamRequest(serializedBytes: bytes)
            return try deleteStream(request.streamID, epoch: request.epoch)
        case .pdCreateRange:
            let request = try Elasticstream_V1_CreateRangeRequest(serializedBytes: bytes)
            return try createRange(request.range, epoch: request.epoch, avoiding: Set(request.avoidServerIds), now: now)
        case .pdSealRange:
            let request = try Elasticstream_V1_SealRangeRequest(serializedBytes: bytes)
            return try sealRange(request.range, epoch: request.epoch)
        case .registerRangeServer:
            return try registerServer(Elasticstream_V1_RegisterRangeServerRequest(serializedBytes: bytes).server,
                                      now: now)
        case .rangeServerHeartbeat:
            return try heartbeat(Elasticstream_V1_RangeServerHeartbeatRequest(serializedBytes: bytes), now: now)
        case .allocateID:
            let request = try Elasticstream_V1_AllocateIdRequest(serializedBytes: bytes)
            return try allocate(request.kind, count: request.count)
        case .commitObject:
            return try commitObject(Elasticstream_V1_CommitObjectRequest(serializedBytes: bytes).object)
        default:
            throw PDError(.unsupportedOperation, "\(command.operation) does not change the placement driver's state")
        }
    }

    private mutating func record(_ kind: Elasticstream_V1_WatchEventKind, _ set: (inout WatchEvent) -> Void) {
        var event = WatchEvent()
        event.kind = kind
        event.revision = revision
        set(&event)
        events.append(event)
        if events.count > settings.watchHistory {
            events.removeFirst(events.count - settings.watchHistory)
            historyStart = max(historyStart, events.first!.revision - 1)
        }
    }

    // MARK: Streams

    private mutating func createStream(_ requested: StreamRecord) throws -> PDResult {
        let replicas = requested.replicaCount == 0 ? 3 : requested.replicaCount
        let acks = requested.ackCount == 0 ? replicas / 2 + 1 : requested.ackCount
        guard replicas <= 16 else { throw PDError(.invalidArgument, "replica_count \(replicas) is over 16") }
        guard acks >= 1, acks <= replicas else {
            throw PDError(.invalidArgument, "ack_count \(acks) must be between 1 and replica_count \(replicas)")
        }
        guard nextID[.stream]! <= WireBounds.maxID else { throw PDError(.invalidArgument, "stream ids are exhausted") }
        var stream = StreamRecord()
        stream.streamID = nextID[.stream]!
        nextID[.stream]! += 1
        stream.replicaCount = replicas
        stream.ackCount = acks
        stream.retentionMs = requested.retentionMs
        streams[stream.streamID] = stream
        ranges[stream.streamID] = []
        record(.watchAdded) { $0.stream = stream }
        return .stream(stream)
    }

    /// Debug builds check the invariants of a stream's ranges where a change can break them (the last two ranges,
    /// so that the check costs the same at any length): indexes follow each other, only the last range may be open,
    /// a sealed range ends at or after its start, and a range starts where the one before it was sealed.
    private func assertRangesFollowEachOther(_ stream: UInt64) {
        #if DEBUG
        guard let list = ranges[stream], let last = list.last else { return }
        assert(!last.sealed || last.endOffset >= last.startOffset, "a sealed range ends before its start")
        guard list.count >= 2 else { return }
        let previous = list[list.count - 2]
        assert(previous.index &+ 1 == last.index, "range indexes of stream \(stream) do not follow each other")
        assert(previous.sealed, "range \(previous.index) of stream \(stream) is open but not the last")
        assert(last.startOffset == previous.endOffset, "range \(last.index) does not start where \(previous.index) ends")
        #endif
    }

    /// The stream, if it exists and is not deleted.
    private func liveStream(_ id: UInt64) throws -> StreamRecord {
        guard let stream = streams[id] else { throw PDError(.streamNotFound, "no stream \(id)") }
        if stream.deleted { throw PDError(.streamDeleted, "stream \(id) was deleted") }
        return stream
    }

    /// The stream, if `epoch` is its current one: every stream-changing call from a writer checks it.
    private func fencedStream(_ id: UInt64, epoch: UInt64) throws -> StreamRecord {
        let stream = try liveStream(id)
        guard epoch == stream.epoch else {
            throw PDError(.epochFenced, "stream \(id) is at epoch \(stream.epoch); the request has epoch \(epoch)")
        }
        return stream
    }

    private mutating func openStream(_ id: UInt64, epoch: UInt64) throws -> PDResult {
        var stream = try liveStream(id)
        // A new writer takes the stream: the epoch goes up, and every request with an older one is refused. (A stream
        // whose epoch an older build let reach the bound stays readable, but takes no new writer.)
        let current = max(stream.epoch, epoch)
        guard current < WireBounds.maxEpoch else {
            throw PDError(.invalidArgument, "stream \(id) is at epoch \(current), the largest there is: it takes no new writer")
        }
        stream.epoch = current + 1
        assert(stream.epoch > epoch && stream.epoch > streams[id]!.epoch, "an epoch went down")
        streams[id] = stream
        record(.watchModified) { $0.stream = stream }
        // Only the last range: the new writer seals it (if open) and starts the next. A stream may have hundreds of
        // thousands of ranges; readers page through them with LIST_RANGES.
        return .stream(stream, ranges: ranges[id]?.last.map { [$0] } ?? [])
    }

    private mutating func updateStream(_ request: Elasticstream_V1_UpdateStreamRequest) throws -> PDResult {
        var stream = try fencedStream(request.streamID, epoch: request.epoch)
        if request.hasReplicaCount { stream.replicaCount = request.replicaCount }
        if request.hasAckCount { stream.ackCount = request.ackCount }
        if request.hasRetentionMs { stream.retentionMs = request.retentionMs }
        guard stream.replicaCount >= 1, stream.replicaCount <= 16, stream.ackCount >= 1,
              stream.ackCount <= stream.replicaCount
        else {
            throw PDError(.invalidArgument,
                          "replica_count \(stream.replicaCount) and ack_count \(stream.ackCount) are inconsistent")
        }
        streams[stream.streamID] = stream
        record(.watchModified) { $0.stream = stream }
        return .stream(stream)
    }

    private mutating func trimStream(_ id: UInt64, epoch: UInt64, to start: UInt64) throws -> PDResult {
        var stream = try fencedStream(id, epoch: epoch)
        guard start >= stream.startOffset else {
            throw PDError(.offsetOutOfRange, "stream \(id) already starts at \(stream.startOffset), past \(start)")
        }
        stream.startOffset = start
        streams[id] = stream
        // Sealed ranges wholly below the new start are gone, except the last one: the next range's index and start
        // follow from it (range indexes are never reused).
        let last = ranges[id]?.last?.index
        ranges[id]?.removeAll { $0.sealed && $0.endOffset <= start && $0.index != last }
        record(.watchModified) { $0.stream = stream }
        return .stream(stream)
    }

    private mutating func deleteStream(_ id: UInt64, epoch: UInt64) throws -> PDResult {
        var stream = try fencedStream(id, epoch: epoch)
        stream.deleted = true
        streams[id] = stream
        record(.watchDeleted) { $0.stream = stream }
        return .stream(stream)
    }

    // MARK: Ranges

    private mutating func createRange(_ requested: RangeRecord, epoch: UInt64, avoiding failed: Set<UInt64>, now: Int64)
        throws -> PDResult
    {
        let stream = try fencedStream(requested.streamID, epoch: epoch)
        let existing = ranges[stream.streamID] ?? []
        let previous = existing.last
        if let previous, previous.index >= WireBounds.maxRangeIndex {
            throw PDError(.invalidArgument, "stream \(stream.streamID) has used every range index")
        }
        let expectedIndex = previous.map { $0.index + 1 } ?? 0
        guard requested.index == expectedIndex else {
            throw PDError(.invalidArgument, "stream \(stream.streamID)'s next range is \(expectedIndex), not \(requested.index)")
        }
        if let previous {
            guard previous.sealed else {
                throw PDError(.previousRangeNotSealed, "range \(previous.index) of stream \(stream.streamID) is open")
            }
            guard requested.startOffset == previous.endOffset else {
                throw PDError(.invalidArgument,
                              "range \(requested.index) must start at \(previous.endOffset), where range \(previous.index) ends")
            }
        } else if requested.startOffset != stream.startOffset {
            throw PDError(.invalidArgument, "the first range must start at the stream's start \(stream.startOffset)")
        }
        var range = RangeRecord()
        range.streamID = stream.streamID
        range.index = requested.index
        range.startOffset = requested.startOffset
        range.epoch = stream.epoch
        range.replicaCount = stream.replicaCount
        range.ackCount = stream.ackCount
        range.servers = try place(count: Int(stream.replicaCount), atLeast: Int(stream.ackCount), avoiding: failed,
                                  now: now)
        ranges[stream.streamID, default: []].append(range)
        assertRangesFollowEachOther(stream.streamID)
        record(.watchAdded) { $0.range = range }
        return .range(range)
    }

    /// `count` healthy servers (online, heartbeat within the timeout), each at most once: servers the writer saw fail
    /// last, then the least loaded, then by id (every member must choose the same). With fewer healthy servers than
    /// `count` but at least `atLeast` (the ack count), the range is placed on all of them: writes go on, with less
    /// redundancy, rather than stop.
    func place(count: Int, atLeast: Int? = nil, avoiding: Set<UInt64>, now: Int64) throws -> [ServerRecord] {
        let healthy = servers.values.filter { isHealthy($0, now: now) }
        guard healthy.count >= min(count, atLeast ?? count) else {
            throw PDError(.notEnoughServers,
                          "\(count) replicas need \(count) healthy range servers; \(healthy.count) of \(servers.count) are healthy")
        }
        return Array(healthy.sorted { a, b in
            let avoidA = avoiding.contains(a.serverID), avoidB = avoiding.contains(b.serverID)
            if avoidA != avoidB { return !avoidA }
            if a.load.ranges != b.load.ranges { return a.load.ranges < b.load.ranges }
            return a.serverID < b.serverID
        }.prefix(count))
    }

    public func isHealthy(_ server: ServerRecord, now: Int64) -> Bool {
        server.state == .serverOnline && now - server.lastHeartbeatMs <= settings.heartbeatTimeoutMilliseconds
    }

    private mutating func sealRange(_ requested: RangeRecord, epoch: UInt64) throws -> PDResult {
        let stream = try fencedStream(requested.streamID, epoch: epoch)
        guard let position = Self.position(of: requested.index, in: ranges[stream.streamID] ?? []) else {
            throw PDError(.rangeNotFound, "stream \(stream.streamID) has no range \(requested.index)")
        }
        var range = ranges[stream.streamID]![position]
        if range.sealed {
            // Sealing again at the same end is a no-op.
            guard range.endOffset == requested.endOffset else {
                throw PDError(.rangeEndMismatch, "range \(range.index) of stream \(stream.streamID) is sealed at \(range.endOffset)")
            }
            return .range(range)
        }
        guard requested.endOffset >= range.startOffset else {
            throw PDError(.invalidArgument, "end \(requested.endOffset) is before the range's start \(range.startOffset)")
        }
        range.sealed = true
        range.endOffset = requested.endOffset
        ranges[stream.streamID]![position] = range
        assertRangesFollowEachOther(stream.streamID)
        record(.watchModified) { $0.range = range }
        return .range(range)
    }

    // MARK: Servers, ids, objects

    private mutating func registerServer(_ requested: ServerRecord, now: Int64) throws -> PDResult {
        guard !requested.shardAddresses.isEmpty else {
            throw PDError(.invalidArgument, "a range server registers at least one shard address")
        }
        var server = requested
        if server.serverID == 0 {
            server.serverID = nextID[.rangeServer]!
        }
        guard server.serverID <= WireBounds.maxID else {
            throw PDError(.invalidArgument, "range server ids are exhausted")
        }
        nextID[.rangeServer] = max(nextID[.rangeServer]!, server.serverID + 1)
        server.state = .serverOnline
        server.lastHeartbeatMs = now
        let added = servers[server.serverID] == nil
        servers[server.serverID] = server
        record(added ? .watchAdded : .watchModified) { $0.rangeServer = server }
        return .serverID(server.serverID)
    }

    private mutating func heartbeat(_ request: Elasticstream_V1_RangeServerHeartbeatRequest, now: Int64) throws -> PDResult {
        guard var server = servers[request.serverID] else {
            throw PDError(.serverNotFound, "no range server \(request.serverID); register first")
        }
        let before = server.state
        server.lastHeartbeatMs = now
        if request.hasLoad { server.load = request.load }
        if request.state != .unspecified { server.state = request.state }
        servers[server.serverID] = server
        if server.state != before { record(.watchModified) { $0.rangeServer = server } }
        return .done
    }

    private mutating func allocate(_ kind: Elasticstream_V1_IdKind, count: UInt32) throws -> PDResult {
        guard let first = nextID[kind] else { throw PDError(.invalidArgument, "no id kind \(kind)") }
        guard count >= 1, count <= 1 << 20 else { throw PDError(.invalidArgument, "count \(count) out of 1...\(1 << 20)") }
        let (next, overflow) = first.addingReportingOverflow(UInt64(count))
        guard !overflow, next - 1 <= WireBounds.maxID else {
            throw PDError(.invalidArgument, "ids of kind \(kind) are exhausted: \(count) from \(first)")
        }
        nextID[kind] = next
        return .firstID(first)
    }

    private mutating func commitObject(_ object: ObjectRecord) throws -> PDResult {
        _ = try liveStream(object.streamID)
        guard object.endOffset > object.startOffset else {
            throw PDError(.invalidArgument, "object [\(object.startOffset), \(object.endOffset)) is empty")
        }
        let existing = objects[object.streamID] ?? []
        if existing.contains(where: { $0.startOffset < object.endOffset && object.startOffset < $0.endOffset && $0 != object }) {
            throw PDError(.objectConflict, "an object overlapping [\(object.startOffset), \(object.endOffset)) exists")
        }
        if !existing.contains(object) {
            objects[object.streamID, default: []].append(object)
            objects[object.streamID]!.sort { $0.startOffset < $1.startOffset }
            record(.watchAdded) { $0.object = object }
        }
        return .done
    }

    // MARK: - Reads

    public func describeStream(_ id: UInt64) throws(PDError) -> StreamRecord {
        guard let stream = streams[id] else { throw PDError(.streamNotFound, "no stream \(id)") }
        return stream
    }

    /// Streams in id order after `after`, at most `limit`.
    public func listStreams(after: UInt64, limit: Int) -> [StreamRecord] {
        Array(streams.values.filter { $0.streamID > after }.sorted { $0.streamID < $1.streamID }.prefix(limit))
    }

    /// Where range `index` sits in a stream's ranges (contiguous indexes, trimmed from the front).
    static func position(of index: UInt32, in list: [RangeRecord]) -> Int? {
        guard let first = list.first?.index, index >= first else { return nil }
        let position = Int(index - first)
        guard position < list.count, list[position].index == index else { return nil }
        return position
    }

    /// The default and the largest page of LIST_RANGES.
    public static let defaultRangePage = 1_000
    public static let maxRangePage = 10_000

    /// Every range of a stream, in index order (all pages; for tests and small streams).
    public func listRanges(stream id: UInt64) throws(PDError) -> [RangeRecord] {
        guard streams[id] != nil else { throw PDError(.streamNotFound, "no stream \(id)") }
        return ranges[id] ?? []
    }

    /// One page of a stream's ranges: from index `startIndex`, and from the range that holds `startOffset` (or the
    /// first after it), at most `limit`. `more` when ranges follow the page.
    public func listRanges(stream id: UInt64, startIndex: UInt32, startOffset: UInt64, limit: Int)
        throws(PDError) -> (ranges: [RangeRecord], more: Bool)
    {
        guard streams[id] != nil else { throw PDError(.streamNotFound, "no stream \(id)") }
        let list = ranges[id] ?? []
        guard let first = list.first?.index else { return ([], false) }
        var from = startIndex > first ? Int(startIndex - first) : 0
        if startOffset > 0 {
            // Ranges are in offset order: the first one that is open or ends past the offset holds it (or follows it).
            var low = 0
            var high = list.count
            while low < high {
                let mid = (low + high) / 2
                if list[mid].sealed && list[mid].endOffset <= startOffset { low = mid + 1 } else { high = mid }
            }
            // At or past the stream's end: its last range, so that a reader can tell the end from beyond it.
            if low == list.count && from <= list.count - 1 { return ([list[list.count - 1]], false) }
            from = max(from, low)
        }
        guard from < list.count else { return ([], false) }
        let end = from + min(list.count - from, max(1, limit))
        return (Array(list[from..<end]), end < list.count)
    }

    /// One page of the ranges placed on server `id`, of streams not deleted, in (stream id, index) order from
    /// (`startStream`, `startIndex`), at most `limit`. `more` when the page was cut short.
    public func listRanges(server id: UInt64, startStream: UInt64, startIndex: UInt32, limit: Int)
        -> (ranges: [RangeRecord], more: Bool)
    {
        var page: [RangeRecord] = []
        let limit = max(1, limit)
        for stream in ranges.keys.sorted() where stream >= startStream && streams[stream]?.deleted != true {
            let list = ranges[stream]!
            // Within the first stream, start at `startIndex` directly (by index arithmetic, not a scan).
            var from = 0
            if stream == startStream, let first = list.first?.index, startIndex > first {
                from = Int(startIndex - first)
            }
            guard from < list.count else { continue }
            for range in list[from...] {
                guard range.servers.contains(where: { $0.serverID == id }) else { continue }
                if page.count == limit { return (page, true) }
                page.append(range)
            }
        }
        return (page, false)
    }

    /// Every range placed on server `id` (all pages; for tests).
    public func listRanges(server id: UInt64) -> [RangeRecord] {
        listRanges(server: id, startStream: 0, startIndex: 0, limit: .max).ranges
    }

    /// The servers, with the state a reader at `now` should see (online but silent past the timeout reads offline).
    public func listServers(now: Int64) -> [ServerRecord] {
        servers.keys.sorted().map { id in
            var server = servers[id]!
            if server.state == .serverOnline && !isHealthy(server, now: now) { server.state = .serverOffline }
            return server
        }
    }

    public func listObjects(stream id: UInt64, from start: UInt64, to end: UInt64) -> [ObjectRecord] {
        (objects[id] ?? []).filter { $0.endOffset > start && $0.startOffset < end }
    }

    /// Changes after `revision`, oldest first; REVISION_COMPACTED when they are no longer all kept.
    public func events(after revision: UInt64) throws(PDError) -> [WatchEvent] {
        if revision < historyStart {
            throw PDError(.revisionCompacted, "events up to revision \(historyStart) are no longer kept")
        }
        return events.filter { $0.revision > revision }
    }

    /// Events after this revision are all kept (0 for a state built from the first entry; a restored snapshot's
    /// revision otherwise, since snapshots do not carry the history).
    private var historyStart: UInt64 = 0

    // MARK: - Snapshots

    /// The whole state, for a Raft snapshot: length-prefixed protobuf records.
    public func snapshot() throws -> [UInt8] {
        var out: [UInt8] = []
        func put(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { out += $0 } }
        func put(_ message: some SwiftProtobuf.Message) throws {
            let bytes: [UInt8] = try message.serializedBytes()
            put(UInt64(bytes.count))
            out += bytes
        }
        put(2)  // version
        put(revision)
        for kind in [Elasticstream_V1_IdKind.stream, .rangeServer, .object] { put(nextID[kind]!) }
        put(UInt64(streams.count))
        for id in streams.keys.sorted() { try put(streams[id]!) }
        let allRanges = ranges.keys.sorted().flatMap { ranges[$0]! }
        put(UInt64(allRanges.count))
        for range in allRanges { try put(range) }
        put(UInt64(servers.count))
        for id in servers.keys.sorted() { try put(servers[id]!) }
        let allObjects = objects.keys.sorted().flatMap { objects[$0]! }
        put(UInt64(allObjects.count))
        for object in allObjects { try put(object) }
        put(UInt64(sessions.count))
        for client in sessions.keys.sorted() {
            let session = sessions[client]!
            put(client)
            put(session.lastUsed)
            put(UInt64(session.results.count))
            for sequence in session.results.keys.sorted() {
                put(sequence)
                let encoded = try session.results[sequence]!.encoded()
                put(UInt64(encoded.count))
                out += encoded
            }
        }
        return out
    }

    public init(settings: Settings = Settings(), restoring bytes: [UInt8]) throws {
        self.init(settings: settings)
        var offset = 0
        func get() throws -> UInt64 {
            guard offset + 8 <= bytes.count else { throw PDError(.dataCorrupted, "snapshot truncated at \(offset)") }
            defer { offset += 8 }
            return bytes[offset..<(offset + 8)].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        func message<M: SwiftProtobuf.Message>(_: M.Type) throws -> M {
            let length = Int(try get())
            guard length >= 0, offset + length <= bytes.count else {
                throw PDError(.dataCorrupted, "snapshot record truncated at \(offset)")
            }
            defer { offset += length }
            return try M(serializedBytes: Array(bytes[offset..<(offset + length)]))
        }
        guard try get() == 2 else { throw PDError(.dataCorrupted, "unknown snapshot version") }
        revision = try get()
        historyStart = revision
        for kind in [Elasticstream_V1_IdKind.stream, .rangeServer, .object] { nextID[kind] = try get() }
        for _ in 0..<(try get()) {
            let stream = try message(StreamRecord.self)
            streams[stream.streamID] = stream
            ranges[stream.streamID] = []
        }
        for _ in 0..<(try get()) {
            let range = try message(RangeRecord.self)
            ranges[range.streamID, default: []].append(range)
        }
        for _ in 0..<(try get()) {
            let server = try message(ServerRecord.self)
            servers[server.serverID] = server
        }
        for _ in 0..<(try get()) {
            let object = try message(ObjectRecord.self)
            objects[object.streamID, default: []].append(object)
        }
        for _ in 0..<(try get()) {
            let client = try get()
            var session = Session()
            session.lastUsed = try get()
            for _ in 0..<(try get()) {
                let sequence = try get()
                let length = Int(try get())
                guard length >= 0, offset + length <= bytes.count else {
                    throw PDError(.dataCorrupted, "snapshot session truncated at \(offset)")
                }
                session.results[sequence] = try PDResult(decoding: Array(bytes[offset..<(offset + length)]))
                offset += length
            }
            sessions[client] = session
        }
        guard offset == bytes.count else { throw PDError(.dataCorrupted, "\(bytes.count - offset) bytes left in snapshot") }
        rebuildUsage()
    }
}
