import Logging
import PlacementDriverClient
import Platform
import Reactor
import Records
import SwiftProtobuf
import Transport
import Wire

/// The writer of one stream, for one epoch: appends by chasing write. Every append goes, in order, to every replica
/// of the stream's last range at once; it is acknowledged (in order) once `ackCount` replicas confirm it, so a slow
/// replica keeps receiving but never delays an acknowledgement. Appends are pipelined, bounded by count and bytes.
///
/// When fewer than `ackCount` replicas are left healthy, or one lags past `maxReplicaLagBytes`, the writer seals the
/// range at the end a quorum confirmed (through the placement driver), starts the next range on healthy servers, and
/// replays the appends not yet acknowledged, with the same offsets: callers see a pause, not an error. A newer writer
/// of the stream fences this one: its appends then fail with `ClientError.fenced`. Shard-bound.
public final class StreamWriter {
    public let streamID: UInt64
    public private(set) var epoch: UInt64
    public private(set) var stream: StreamRecord
    let client: ElasticStreamClient
    let reader: StreamReader
    let logger = Logger(label: "elastic-stream.client")
    /// The ranges known, the last one being written.
    public private(set) var ranges: [RangeRecord] = []
    private var replicas: [Replica] = []
    /// Bumped with every new range: answers about an older one are ignored.
    private var generation: UInt64 = 0
    private var appendHeader = Elasticstream_V1_AppendRequest()
    /// A notice of the acknowledged end is due (nothing was in flight to carry it).
    private var noticeScheduled = false
    /// When an append (or a notice) last went to the replicas.
    private var lastSent: Instant
    /// The keepalive task, cancelled when the writer closes or stops (a sleeping task would hold a reactor's drain).
    private var keepalive: Task<Void, Error>?
    /// The offset the next append gets.
    public private(set) var nextOffset: UInt64 = 0
    /// Every record below is confirmed by `ackCount` replicas (and acknowledged to its caller).
    public private(set) var acknowledgedEnd: UInt64 = 0
    private var entries: [Entry] = []
    private var head = 0
    private var inFlightBytes = 0
    private var roomWaiters: [UnsafeContinuation<Void, Never>] = []
    private var failingOver = false
    private var fatal: ClientError?
    private var closed = false
    /// Ranges this writer moved on from because replicas failed or lagged.
    public private(set) var failovers = 0
    private var fruitlessFailovers = 0
    private var lastFailoverEnd: UInt64 = .max
    private var lastFailoverReason = "" 

    final class Replica {
        let server: Elasticstream_V1_RangeServer
        let address: String
        var confirmed: UInt64
        var failed: Bool
        /// Bytes sent and not yet answered: how far this replica lags.
        var unanswered = 0

        init(server: Elasticstream_V1_RangeServer, address: String, confirmed: UInt64, failed: Bool) {
            self.server = server
            self.address = address
            self.confirmed = confirmed
            self.failed = failed
        }
    }

    struct Entry {
        let base: UInt64
        let end: UInt64
        var bytes: [UInt8]
        let continuation: UnsafeContinuation<Result<UInt64, ClientError>, Never>
    }

    private init(stream: StreamRecord, ranges: [RangeRecord], client: ElasticStreamClient) {
        streamID = stream.streamID
        epoch = stream.epoch
        self.stream = stream
        self.ranges = ranges
        self.client = client
        reader = StreamReader(client: client, streamID: stream.streamID)
        lastSent = client.context.now
        reader.merge(ranges)
    }

    var configuration: ClientConfiguration { client.configuration }
    var context: ShardContext { client.context }
    var ackCount: Int { Int(stream.ackCount) }

    static func open(_ id: UInt64, client: ElasticStreamClient) async throws(ClientError) -> StreamWriter {
        var request = Elasticstream_V1_OpenStreamRequest()
        request.streamID = id
        let opened = try await client.call(.openStream, request, as: Elasticstream_V1_OpenStreamResponse.self)
        let writer = StreamWriter(stream: opened.stream, ranges: opened.ranges, client: client)
        writer.reader.openRangeLimit = { [weak writer] in writer?.acknowledgedEnd ?? 0 }
        try await writer.takeOver()
        writer.startKeepalive()
        return writer
    }

    // MARK: - Taking over

    /// Seals the range an earlier writer left open (at the end a quorum of its replicas confirms) and starts the
    /// next range.
    private func takeOver() async throws(ClientError) {
        let deadline = context.now + configuration.failoverTimeout
        var start = stream.startOffset
        var index: UInt32 = 0
        if let last = ranges.last {
            if last.sealed {
                start = last.endOffset
            } else {
                let end = try await quorumEnd(of: last, until: deadline)
                let sealed = try await sealAtPlacementDriver(last, at: end, until: deadline)
                await notifySeal(sealed)
                start = end
            }
            index = last.index + 1
        }
        try await startRange(index: index, start: start, avoiding: [], until: deadline)
        nextOffset = start
        acknowledgedEnd = start
    }

    /// Fences every replica of `range` and returns the end a quorum confirms: from `s` answers of `r` replicas with
    /// `a` acknowledging, the `(a - r + s)`-th highest end is at or past every acknowledged record (at least that many
    /// of the answering replicas hold each one). Needs `r - a + 1` answers.
    private func quorumEnd(of range: RangeRecord, until deadline: Instant) async throws(ClientError) -> UInt64 {
        var request = Elasticstream_V1_SealRangeRequest()
        request.range = range
        request.range.sealed = false
        request.epoch = epoch
        let header = (try? request.serializedBytes()) ?? []
        let replicaCount = range.servers.count
        let acks = Int(range.ackCount == 0 ? stream.ackCount : range.ackCount)
        var backoff = Duration.milliseconds(50)
        while true {
            let addresses = range.servers.map { ElasticStreamClient.address(of: $0, for: range) ?? "" }
            let needed = ReplicaQuorum.answersNeeded(replicaCount: replicaCount, ackCount: acks)
            let answers = await callAll(addresses, .sealRange, header, enough: needed)
            var ends: [UInt64] = []
            for answer in answers {
                switch answer {
                case .success(let frame):
                    if let response = try? frame.header(as: Elasticstream_V1_SealRangeResponse.self) {
                        ends.append(response.range.endOffset)
                    }
                case .failure(.refused(.rangeNotFound, _)):
                    // It never received the range: it holds nothing of it.
                    ends.append(range.startOffset)
                case .failure(.refused(.epochFenced, let message)):
                    // A newer writer opened the stream after this one did and fenced the range first: this writer
                    // can never seal it; waiting out the failover timeout would only delay the caller.
                    throw .fenced(message)
                default:
                    break
                }
            }
            if let end = ReplicaQuorum.sealEnd(ends: ends, replicaCount: replicaCount, ackCount: acks) {
                logger.info("sealing an orphan range", metadata: [
                    "stream": "\(streamID)", "range": "\(range.index)", "ends": "\(ends)", "end": "\(end)",
                ])
                return max(end, range.startOffset)
            }
            guard context.now < deadline else {
                throw .unavailable("only \(ends.count) of \(replicaCount) replicas of range \(range.index) answered; "
                                   + "\(needed) are needed to find its end")
            }
            try? await context.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(1))
        }
    }

    private func sealAtPlacementDriver(_ range: RangeRecord, at end: UInt64, until deadline: Instant)
        async throws(ClientError) -> RangeRecord
    {
        var request = Elasticstream_V1_SealRangeRequest()
        request.range = range
        request.range.endOffset = end
        request.range.sealed = true
        request.epoch = epoch
        while true {
            do {
                let sealed = try await client.call(.pdSealRange, request, as: Elasticstream_V1_SealRangeResponse.self).range
                if let position = ranges.firstIndex(where: { $0.index == sealed.index }) { ranges[position] = sealed }
                reader.merge(ranges)
                return sealed
            } catch {
                if case .placementDriver(let pd) = error, pd.code == .timeout || pd.code == .noLeader,
                   context.now < deadline {
                    continue
                }
                throw error
            }
        }
    }

    /// Tells the replicas of a sealed range its end, and waits for their answers: past `replicaSetupTimeout`, only
    /// for `enough` of them to have confirmed (or for every answer). Readers read a sealed range below the placement
    /// driver's end whether or not a replica knows of the seal, a replica holding less repairs itself from the
    /// others, and a replica that missed it learns it from reconciliation, its lease check or a reader.
    private func notifySeal(_ range: RangeRecord, enough: Int = 0) async {
        var request = Elasticstream_V1_SealRangeRequest()
        request.range = range
        request.epoch = epoch
        let header = (try? request.serializedBytes()) ?? []
        let addresses = range.servers.map { ElasticStreamClient.address(of: $0, for: range) ?? "" }
        _ = await callAll(addresses, .sealRange, header, enough: enough)
    }

    /// Creates range `index` at `start` on the placement driver and on its replicas; retries on other servers while
    /// fewer than `ackCount` replicas take it.
    private func startRange(index: UInt32, start: UInt64, avoiding: Set<UInt64>, until deadline: Instant)
        async throws(ClientError)
    {
        var avoid = avoiding
        var index = index
        var backoff = Duration.milliseconds(50)
        while true {
            var request = Elasticstream_V1_CreateRangeRequest()
            request.range.streamID = streamID
            request.range.index = index
            request.range.startOffset = start
            request.epoch = epoch
            request.avoidServerIds = Array(avoid)
            let range: RangeRecord
            do {
                range = try await client.call(.pdCreateRange, request, as: Elasticstream_V1_CreateRangeResponse.self).range
            } catch {
                if case .placementDriver(let pd) = error, [.notEnoughServers, .timeout, .noLeader].contains(pd.code),
                   context.now < deadline {
                    try? await context.sleep(for: backoff)
                    backoff = min(backoff * 2, .seconds(1))
                    continue
                }
                throw error
            }
            ranges.append(range)
            reader.merge(ranges)
            var create = Elasticstream_V1_CreateRangeRequest()
            create.range = range
            create.epoch = epoch
            let header = (try? create.serializedBytes()) ?? []
            let addresses = range.servers.map { ElasticStreamClient.address(of: $0, for: range) ?? "" }
            let answers = await callAll(addresses, .createRange, header, enough: ackCount)
            var fresh: [Replica] = []
            for (i, answer) in answers.enumerated() {
                var ok = false
                switch answer {
                case .success: ok = true
                case .failure(.refused(.epochFenced, let message)): throw .fenced(message)
                default: ok = false
                }
                fresh.append(Replica(server: range.servers[i], address: addresses[i], confirmed: start, failed: !ok))
                if !ok { avoid.insert(range.servers[i].serverID) }
            }
            if fresh.filter({ !$0.failed }).count >= ackCount {
                install(range, fresh)
                return
            }
            // Too few took it: seal it empty and try again elsewhere.
            logger.warning("too few replicas took the new range; trying other servers", metadata: [
                "stream": "\(streamID)", "range": "\(range.index)", "failed": "\(fresh.filter(\.failed).map(\.server.serverID))",
            ])
            _ = try await sealAtPlacementDriver(range, at: start, until: deadline)
            index += 1
            guard context.now < deadline else { throw .unavailable("no \(ackCount) range servers took a new range") }
            try? await context.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(1))
        }
    }

    private func install(_ range: RangeRecord, _ fresh: [Replica]) {
        replicas = fresh
        generation += 1
        var header = Elasticstream_V1_AppendRequest()
        header.streamID = streamID
        header.rangeIndex = range.index
        header.epoch = epoch
        header.timeoutMs = UInt32(clamping: configuration.appendTimeout.components.seconds * 1000
            + configuration.appendTimeout.components.attoseconds / 1_000_000_000_000_000)
        appendHeader = header
    }

    /// Calls every address at once and returns their answers, in address order. It returns when every replica
    /// answered; or, once `replicaSetupTimeout` has passed, as soon as `enough` answered successfully (those that
    /// have not answered count as timed out); or after `requestTimeout` in any case. So a stopped or dead server
    /// delays a control call by at most `replicaSetupTimeout` while enough others answer.
    private func callAll(_ addresses: [String], _ operation: OperationCode, _ header: [UInt8], enough: Int) async
        -> [Result<Frame, CallError>]
    {
        guard !addresses.isEmpty else { return [] }
        final class Gather {
            var results: [Result<Frame, CallError>?]
            var remaining: Int
            var successes = 0
            var graceOver = false
            var continuation: UnsafeContinuation<[Result<Frame, CallError>], Never>?
            /// The grace timer, cancelled once the answers are in (a sleeping timer would hold a reactor's drain).
            var timer: Task<Void, Error>?
            let enough: Int
            let addresses: [String]
            init(_ addresses: [String], enough: Int) {
                results = Array(repeating: nil, count: addresses.count)
                remaining = addresses.count
                self.enough = enough
                self.addresses = addresses
            }
            func finishIfDone() {
                guard let continuation, remaining == 0 || (graceOver && successes >= enough) else { return }
                self.continuation = nil
                timer?.cancel()
                timer = nil
                continuation.resume(returning: results.enumerated().map { $1 ?? .failure(.timedOut(address: addresses[$0])) })
            }
        }
        let gather = Gather(addresses, enough: enough)
        let grace = configuration.replicaSetupTimeout
        let bound = ShardBound((gather, context))
        gather.timer = context.spawn {
            let (gather, context) = bound.value
            try? await context.sleep(for: grace)
            gather.graceOver = true
            gather.finishIfDone()
        }
        let timeout = configuration.requestTimeout
        return await withUnsafeContinuation { (continuation: UnsafeContinuation<[Result<Frame, CallError>], Never>) in
            gather.continuation = continuation
            for (i, address) in addresses.enumerated() {
                let answer: (Result<Frame, CallError>) -> Void = { result in
                    guard gather.results[i] == nil else { return }
                    gather.results[i] = result
                    gather.remaining -= 1
                    if case .success = result { gather.successes += 1 }
                    gather.finishIfDone()
                }
                if address.isEmpty {
                    answer(.failure(.unreachable(address: "?", detail: "the server registered no address")))
                } else {
                    client.server(address).send(operation, headerBytes: header, payload: [], timeout: timeout,
                                                completion: answer)
                }
            }
        }
    }

    // MARK: - Appending

    /// Appends `records` (at most 65,535 of them) as one batch and returns the offset of the first, once `ackCount`
    /// replicas hold them durably. Appends are acknowledged in the order they were made.
    public func append(_ records: [Record]) async throws(ClientError) -> UInt64 {
        guard !records.isEmpty else { throw .invalidArgument("an append needs at least one record") }
        if let fatal { throw fatal }
        guard !closed else { throw .closed }
        while (entries.count - head >= configuration.maxInFlightAppends || inFlightBytes >= configuration.maxInFlightBytes)
            && fatal == nil && !closed {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                roomWaiters.append(continuation)
            }
        }
        if let fatal { throw fatal }
        guard !closed else { throw .closed }
        let base = nextOffset
        guard UInt64(records.count) <= WireBounds.maxOffset - min(base, WireBounds.maxOffset) else {
            throw .invalidArgument("the stream is at offset \(base): \(records.count) more records would pass the "
                                   + "largest offset \(WireBounds.maxOffset)")
        }
        let batch = RecordBatch(streamID: streamID, rangeIndex: ranges.last?.index ?? 0, baseOffset: base,
                                baseTimestamp: records.lazy.map(\.timestamp).min() ?? 0, records: records)
        let bytes: [UInt8]
        do {
            bytes = try batch.encoded()
        } catch {
            throw .invalidArgument("the records do not form a valid batch: \(error)")
        }
        guard bytes.count <= configuration.maxBatchBytes else {
            throw .invalidArgument("a batch of \(bytes.count) bytes is over the limit of \(configuration.maxBatchBytes) "
                                   + "bytes: append fewer or smaller records")
        }
        nextOffset += UInt64(records.count)
        let result = await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<UInt64, ClientError>, Never>) in
            entries.append(Entry(base: base, end: base + UInt64(records.count), bytes: bytes, continuation: continuation))
            inFlightBytes += bytes.count
            if !failingOver { send(entries.count - 1) }
        }
        return try result.get()
    }

    /// Sends the entry at `position` of `entries` to every healthy replica: the frame is encoded (and checksummed)
    /// once; each replica's copy differs only in its request id.
    private func send(_ position: Int) {
        lastSent = context.now
        let generation = generation
        let size = entries[position].bytes.count
        // Each append tells the replicas the acknowledged end so far (committed-only readers stop there).
        appendHeader.acknowledgedOffset = acknowledgedEnd
        let header = (try? appendHeader.serializedBytes() as [UInt8]) ?? []
        let wire: [UInt8]
        do {
            wire = try entries[position].bytes.withUnsafeBytes { raw in
                try Frame.encodeRequest(operation: .append, requestID: 0, header: header, payload: raw)
            }
        } catch {
            // `append` refuses batches over the frame limit, so this does not happen; if it did, nothing is sent
            // and the writer stops rather than leave a gap in the offsets.
            fail(.invalidArgument("the batch does not fit in a frame: \(error)"))
            return
        }
        for (i, replica) in replicas.enumerated() where !replica.failed {
            replica.unanswered += size
            client.server(replica.address).send(wire: wire, timeout: configuration.appendTimeout) { [self] result in
                answered(i, generation: generation, size: size, result)
            }
        }
    }

    private func answered(_ i: Int, generation: UInt64, size: Int, _ result: Result<Frame, CallError>) {
        guard generation == self.generation, !failingOver, fatal == nil else { return }
        let replica = replicas[i]
        replica.unanswered -= size
        switch result {
        case .success(let frame):
            if let response = try? frame.header(as: Elasticstream_V1_AppendResponse.self) {
                replica.confirmed = max(replica.confirmed, min(response.confirmedOffset, nextOffset))
            }
            advance()
        case .failure(.refused(.epochFenced, let message)):
            // A newer writer fenced this range: stop at once (a failover would be refused too).
            fail(.fenced(message))
        case .failure(let error):
            guard !replica.failed else { return }
            replica.failed = true
            logger.warning("a replica failed", metadata: [
                "stream": "\(streamID)", "range": "\(ranges.last?.index ?? 0)", "server": "\(replica.server.serverID)",
                "error": "\(error)",
            ])
            if replicas.filter({ !$0.failed }).count < ackCount {
                startFailover("fewer than \(ackCount) replicas are healthy")
            } else {
                advance()
            }
        }
    }

    /// Acknowledges, in order, every append below the `ackCount`-th highest confirmed end.
    private func advance() {
        let confirmed = replicas.map(\.confirmed).sorted(by: >)
        guard confirmed.count >= ackCount else { return }
        let end = confirmed[ackCount - 1]
        if end > acknowledgedEnd { acknowledgedEnd = end }
        // Invariant: nothing is acknowledged that was not sent (confirmed ends are clamped to the next offset).
        assert(acknowledgedEnd <= nextOffset, "acknowledged end \(acknowledgedEnd) past the next offset \(nextOffset)")
        while head < entries.count, entries[head].end <= acknowledgedEnd {
            let entry = entries[head]
            inFlightBytes -= entry.bytes.count
            entries[head] = Entry(base: entry.base, end: entry.end, bytes: [], continuation: entry.continuation)
            head += 1
            entry.continuation.resume(returning: .success(entry.base))
        }
        if head > 1024 && head * 2 > entries.count {
            entries.removeFirst(head)
            head = 0
        }
        if head == entries.count && acknowledgedEnd > appendHeader.acknowledgedOffset { scheduleNotice() }
        wakeRoomWaiters()
        // A replica lags when it has this much more unanswered than the replicas that make the acknowledgements.
        let healthy = replicas.filter { !$0.failed }
        guard healthy.count >= ackCount else { return }
        let reference = healthy.map(\.unanswered).sorted()[ackCount - 1]
        for replica in healthy where replica.unanswered - reference > configuration.maxReplicaLagBytes {
            replica.failed = true
            startFailover("replica \(replica.server.serverID) lags by \(replica.unanswered - reference) bytes")
            return
        }
    }

    /// When the writer goes idle, the replicas have not heard the last acknowledged end (it rides on the next
    /// append): shortly after, unless an append carried it meanwhile, an APPEND without records tells them.
    private func scheduleNotice() {
        guard !noticeScheduled else { return }
        noticeScheduled = true
        let bound = ShardBound(self)
        context.spawn {
            try? await bound.value.context.sleep(for: .milliseconds(2))
            bound.value.sendNotice()
        }
    }

    private func sendNotice(keepalive: Bool = false) {
        if !keepalive { noticeScheduled = false }
        guard fatal == nil, !failingOver, !closed, keepalive || acknowledgedEnd > appendHeader.acknowledgedOffset
        else { return }
        lastSent = context.now
        appendHeader.acknowledgedOffset = acknowledgedEnd
        guard let header = try? appendHeader.serializedBytes() as [UInt8],
              let wire = try? Frame.encodeRequest(operation: .append, requestID: 0, header: header,
                                                  payload: UnsafeRawBufferPointer(start: nil, count: 0))
        else { return }
        // Every replica, failed ones too: a replica the writer stopped sending appends to must still hear that the
        // writer is alive, or it would take the writer for gone and seal the range under it.
        for replica in replicas {
            client.server(replica.address).send(wire: wire, timeout: configuration.appendTimeout) { _ in }
        }
    }

    /// While the writer is open, every `keepaliveInterval` in which nothing was sent, an APPEND without records
    /// tells the replicas the writer is alive (and its acknowledged end): a range server seals an open range whose
    /// writer is silent past its `writer_lease`. One task per writer, not per append.
    private func startKeepalive() {
        final class Weak {
            weak var writer: StreamWriter?
            init(_ writer: StreamWriter) { self.writer = writer }
        }
        let bound = ShardBound((Weak(self), context))
        let interval = configuration.keepaliveInterval
        keepalive = context.spawn {
            let (weak, context) = bound.value
            while !Task.isCancelled {
                try? await context.sleep(for: interval)
                guard !Task.isCancelled, let writer = weak.writer, !writer.closed, writer.fatal == nil else { return }
                if writer.context.now - writer.lastSent >= interval { writer.sendNotice(keepalive: true) }
            }
        }
    }

    private func wakeRoomWaiters() {
        guard !roomWaiters.isEmpty else { return }
        let waiters = roomWaiters
        roomWaiters = []
        for waiter in waiters { waiter.resume() }
    }

    // MARK: - Failover

    private func startFailover(_ reason: String) {
        guard !failingOver, fatal == nil else { return }
        failingOver = true
        lastFailoverReason = reason
        failovers += 1
        logger.warning("moving the stream to a new range", metadata: [
            "stream": "\(streamID)", "range": "\(ranges.last?.index ?? 0)", "reason": "\(reason)",
            "end": "\(acknowledgedEnd)",
        ])
        let bound = ShardBound(self)
        context.spawn { await bound.value.failover() }
    }

    /// Seals the range at the acknowledged end, starts the next one on healthy servers, and replays every append not
    /// yet acknowledged into it (same offsets, in order).
    private func failover() async {
        let deadline = context.now + configuration.failoverTimeout
        guard let current = ranges.last else {
            fail(.unavailable("the writer knows no range to move on from"))
            return
        }
        let end = acknowledgedEnd
        // Failovers that acknowledge nothing in between (a refusal every replica repeats) must not go on forever.
        fruitlessFailovers = end == lastFailoverEnd ? fruitlessFailovers + 1 : 0
        lastFailoverEnd = end
        guard fruitlessFailovers < 5 else {
            fail(.unavailable("five new ranges in a row acknowledged nothing; the last reason: \(lastFailoverReason)"))
            return
        }
        let failed = Set(replicas.filter(\.failed).map(\.server.serverID))
        do {
            let sealed = try await sealAtPlacementDriver(current, at: end, until: deadline)
            await notifySeal(sealed)
            try await startRange(index: current.index + 1, start: end, avoiding: failed, until: deadline)
        } catch {
            fail(error)
            return
        }
        failingOver = false
        let index = ranges.last!.index
        for position in head..<entries.count {
            RecordBatchView.setRangeIndex(index, in: &entries[position].bytes)
            send(position)
        }
        logger.info("the stream moved to a new range", metadata: [
            "stream": "\(streamID)", "range": "\(index)", "start": "\(end)", "replayed": "\(entries.count - head)",
            "servers": "\(replicas.map(\.server.serverID))",
        ])
    }

    /// Fails every append in flight and every later one with `error`.
    private func fail(_ error: ClientError) {
        if fatal == nil { fatal = error }
        keepalive?.cancel()
        logger.error("the writer stopped", metadata: ["stream": "\(streamID)", "error": "\(error)"])
        let pending = entries[head...]
        entries = []
        head = 0
        inFlightBytes = 0
        for entry in pending { entry.continuation.resume(returning: .failure(error)) }
        wakeRoomWaiters()
    }

    // MARK: - Reading, trimming, closing

    /// Records from `offset` on, up to about `maxBytes`, across ranges; in the range being written, only records
    /// already acknowledged.
    public func read(from offset: UInt64, maxBytes: Int = 1 << 20) async throws(ClientError) -> [ReadRecord] {
        try await reader.read(from: offset, maxBytes: maxBytes, wait: .zero)
    }

    /// Every record from `offset` on, waiting for new ones.
    public func tail(from offset: UInt64) -> TailSequence { client.tail(stream: streamID, from: offset) }

    /// Drops the records before `offset` (the stream then starts there).
    public func trim(before offset: UInt64) async throws(ClientError) {
        guard offset <= acknowledgedEnd else {
            throw .offsetOutOfRange("offset \(offset) is past the acknowledged end \(acknowledgedEnd)")
        }
        var request = Elasticstream_V1_TrimStreamRequest()
        request.streamID = streamID
        request.epoch = epoch
        request.startOffset = offset
        stream = try await client.call(.trimStream, request, as: Elasticstream_V1_TrimStreamResponse.self).stream
    }

    /// Waits (at most `timeout`) for the appends in flight to be acknowledged, stops taking appends, and seals the
    /// range being written at the acknowledged end, on the placement driver and then on its replicas (waiting for
    /// ack_count of them, or for every answer): when it returns, a reader finds every acknowledged record, and the
    /// next writer has no open range to recover.
    public func close(timeout: Duration = .seconds(10)) async {
        guard !closed else { return }
        let deadline = context.now + timeout
        while (head < entries.count || failingOver) && fatal == nil && context.now < deadline {
            try? await context.sleep(for: .milliseconds(1))
        }
        closed = true
        keepalive?.cancel()
        if head < entries.count {
            fail(.closed)
        } else if fatal == nil, let last = ranges.last, !last.sealed {
            // Sealed on the placement driver, then on the replicas: close returns once ack_count of them hold the
            // seal (or every one answered), so that a reader started now finds the range complete on a quorum.
            if let sealed = try? await sealAtPlacementDriver(last, at: acknowledgedEnd, until: context.now + .seconds(2)) {
                await notifySeal(sealed, enough: Int(sealed.ackCount))
            }
        }
        wakeRoomWaiters()
    }

    /// Deletes the stream; this writer is closed.
    public func delete() async throws(ClientError) {
        var request = Elasticstream_V1_DeleteStreamRequest()
        request.streamID = streamID
        request.epoch = epoch
        stream = try await client.call(.deleteStream, request, as: Elasticstream_V1_DeleteStreamResponse.self).stream
        closed = true
        keepalive?.cancel()
        if head < entries.count { fail(.closed) }
    }
}

@available(*, unavailable)
extension StreamWriter: Sendable {}
