import Logging
import Platform
import Reactor
import Records
import Store
import SwiftProtobuf
import Transport
import Wire

/// The range server on one shard: its store, its listener and the connections it accepted. Requests for ranges this
/// shard owns are served here; others are forwarded to the owner shard. Shard-bound: made on its shard, used there.
final class ShardService {
    let index: Int
    let context: ShardContext
    let store: ShardStore
    let listener: TCPListener
    let configuration: RangeServerConfiguration
    let logger: Logger
    /// Set once the server knows its id (it serves before that; repairs need it to skip themselves).
    var serverID: UInt64 = 0
    /// Routes a request to the shard that owns its range (set by `RangeServer`).
    var forward: ((Int, Frame) async -> Frame)?
    var shardCount = 1
    /// The accept loop and connection policy (bounds, timeouts, protocol errors).
    private var frameServer: FrameServer?
    private var accepting = true
    /// FETCH requests waiting for records, per range.
    private var waiters: [RangeKey: [UInt64]] = [:]
    private var waiting: [UInt64: (continuation: UnsafeContinuation<Void, Never>, deadline: Instant)] = [:]
    private var nextWaiter: UInt64 = 1
    private var sweeping = false
    /// Ranges being repaired from peers.
    private var repairing: Set<RangeKey> = []
    private var activeRepairs = 0
    private var queuedRepairs: [(RangeKey, UInt64, [Elasticstream_V1_RangeServer])] = []
    private var peers: [String: RPCClient] = [:]
    /// Appended bytes since the last heartbeat (the load the server reports).
    var appendedBytes: UInt64 = 0
    /// When the writer of each open range was last heard (an APPEND, with or without records): a range whose
    /// writer is silent past `writer_lease` is sealed by the server (`WriterLeases`). In memory: a restart gives
    /// every writer a whole lease again.
    var lastHeard: [RangeKey: Instant] = [:]
    /// Epochs that fenced ranges here (on disk).
    let fences: FenceTable

    init(index: Int, context: ShardContext, store: ShardStore, listener: TCPListener,
         configuration: RangeServerConfiguration) {
        self.index = index
        self.context = context
        self.store = store
        self.listener = listener
        self.configuration = configuration
        fences = FenceTable(path: "\(configuration.dataDirectory)/fences-\(index)", context: context)
        var logger = Logger(label: "elastic-stream.range-server")
        logger[metadataKey: "shard"] = "\(index)"
        self.logger = logger
    }

    var limits: FrameLimits { FrameLimits(maxFrameBytes: configuration.maxFrameBytes, maxHeaderBytes: 1 << 20) }

    func start() {
        // Every open replica's writer gets a whole lease from now (when it was last heard before a restart is not
        // known).
        let now = context.now
        for key in store.rangeKeys where store.describe(key)?.isSealed == false { lastHeard[key] = now }
        let bound = ShardBound(self)
        let maxAnswer = configuration.maxFrameBytes
        let server = FrameServer(listener: listener, context: context, limits: configuration.connectionLimits,
                                 frameLimits: limits, receiveBufferBytes: 256 << 10, logger: logger, cost: { frame in
            // A FETCH's answer may be up to its max_bytes: counted against the bounds before it is served.
            guard frame.operation == .fetch,
                  let request = try? frame.header(as: Elasticstream_V1_FetchRequest.self) else { return frame.encodedSize }
            return frame.encodedSize + min(max(Int(request.maxBytes), 1), maxAnswer)
        }) { frame in
            await bound.value.route(frame)
        }
        frameServer = server
        server.start()
    }

    /// Requests being served, on every connection of this shard.
    var inFlight: Int { frameServer?.inFlight ?? 0 }

    static func status(_ code: ErrorCode, _ message: String) -> Status {
        var status = Status()
        status.code = code
        status.message = message
        return status
    }

    // MARK: - Routing

    /// The shard that owns the range a request names (nil: any shard may answer).
    func owner(of frame: Frame) -> Int? {
        guard shardCount > 1, let operation = frame.operation else { return nil }
        let key: (UInt64, UInt32)?
        switch operation {
        case .append: key = (try? frame.header(as: Elasticstream_V1_AppendRequest.self)).map { ($0.streamID, $0.rangeIndex) }
        case .fetch: key = (try? frame.header(as: Elasticstream_V1_FetchRequest.self)).map { ($0.streamID, $0.rangeIndex) }
        case .createRange:
            key = (try? frame.header(as: Elasticstream_V1_CreateRangeRequest.self)).map { ($0.range.streamID, $0.range.index) }
        case .sealRange:
            key = (try? frame.header(as: Elasticstream_V1_SealRangeRequest.self)).map { ($0.range.streamID, $0.range.index) }
        case .describeRange:
            key = (try? frame.header(as: Elasticstream_V1_DescribeRangeRequest.self)).map { ($0.streamID, $0.rangeIndex) }
        default: key = nil
        }
        guard let key else { return nil }
        return RangeRouting.shard(streamID: key.0, rangeIndex: key.1, shardCount: shardCount)
    }

    /// Serves the request here when this shard owns its range, else on the owner (over the cross-shard rings).
    func route(_ frame: Frame) async -> Frame {
        if let owner = owner(of: frame), owner != index, let forward {
            return await forward(owner, frame)
        }
        return await respond(to: frame)
    }

    // MARK: - Operations

    func respond(to frame: Frame) async -> Frame {
        guard let operation = frame.operation else {
            return Frame(errorTo: frame, status: Self.status(.unsupportedOperation,
                "operation 0x\(String(frame.rawOperation, radix: 16)) is unknown"))
        }
        do {
            switch operation {
            case .ping, .heartbeat:
                return try Frame(responseTo: frame, header: Elasticstream_V1_PingResponse())
            case .append: return try await append(frame)
            case .fetch: return try await fetch(frame)
            case .createRange: return try await createRange(frame)
            case .sealRange: return try await sealRange(frame)
            case .describeRange: return try describeRange(frame)
            default:
                return Frame(errorTo: frame, status: Self.status(.unsupportedOperation,
                                                                 "a range server does not serve \(operation)"))
            }
        } catch let refusal as Refusal {
            return Frame(errorTo: frame, status: Self.status(refusal.code, refusal.message))
        } catch let error as FieldError {
            return Frame(errorTo: frame, status: Self.status(.invalidArgument, "\(operation): \(error)"))
        } catch let error as StoreError {
            return Frame(errorTo: frame, status: Self.status(Self.code(of: error), "\(error)"))
        } catch {
            return Frame(errorTo: frame, status: Self.status(.badRequest, "\(error)"))
        }
    }

    struct Refusal: Error {
        let code: ErrorCode
        let message: String
        init(_ code: ErrorCode, _ message: String) {
            self.code = code
            self.message = message
        }
    }

    static func code(of error: StoreError) -> ErrorCode {
        switch error {
        case .rangeNotFound: .rangeNotFound
        case .rangeConflict: .rangeEndMismatch
        case .corruption: .dataCorrupted
        case .entryTooLarge: .invalidArgument
        case .io(let io) where io.errno == 28: .storageFull
        case .io, .walFailed: .storageFailed
        case .invalidConfiguration: .unknown
        }
    }

    private func append(_ frame: Frame) async throws -> Frame {
        let request = try frame.header(as: Elasticstream_V1_AppendRequest.self)
        let key = RangeKey(streamID: request.streamID, index: request.rangeIndex)
        try FieldError.offset(request.acknowledgedOffset, "acknowledged_offset")
        try checkEpoch(request.epoch, of: key)
        guard store.describe(key) != nil else { throw Refusal(.rangeNotFound, "no replica of \(key) here") }
        lastHeard[key] = context.now
        let payloadCount = frame.withPayload { $0.count }
        guard payloadCount > 0 else {
            // Only the writer's acknowledged end (it had nothing more to send, or it tells it is alive). Recorded
            // durably before the answer, so that committed readers never see less after a restart.
            if request.acknowledgedOffset > 0 {
                try await store.acknowledge(key, upTo: request.acknowledgedOffset)
                wake(key)
            }
            guard let description = store.describe(key) else { throw Refusal(.rangeNotFound, "no replica of \(key) here") }
            var response = Elasticstream_V1_AppendResponse()
            response.confirmedOffset = description.confirmedEnd
            return try Frame(responseTo: frame, header: response)
        }
        // The store may hold the bytes across a wait for room in the log: they live in one buffer until it answers.
        let stable = UnsafeMutableRawBufferPointer.allocate(byteCount: payloadCount, alignment: 8)
        defer { stable.deallocate() }
        frame.withPayload { stable.copyMemory(from: $0) }
        let raw = UnsafeRawBufferPointer(stable)
        // Validate every batch before storing any of them.
        var batches: [RecordBatchView] = []
        var position = 0
        while position < raw.count {
            let view = try Self.batch(in: raw, at: position, of: key)
            batches.append(view)
            position += view.bytes.count
        }
        // One batch per request is the writer's normal case: it keeps appends of one range in arrival order. Several
        // batches are stored one after another.
        var confirmed: UInt64 = 0
        for (i, batch) in batches.enumerated() {
            // The writer's acknowledged end rides, durably, with the first batch.
            let outcome = try await store.append(batch, acknowledged: i == 0 ? request.acknowledgedOffset : 0)
            switch outcome {
            case .committed(let end), .alreadyCommitted(let end):
                confirmed = end
            case .pending:
                throw Refusal(.appendPending, "an append of these offsets is in flight on \(key)")
            case .overtaken(let expected):
                throw Refusal(.appendOvertaken, "\(key) expects offset \(expected) next")
            case .sealed(let end):
                throw Refusal(.rangeSealed, "\(key) is sealed at \(end)")
            case .rangeNotFound:
                throw Refusal(.rangeNotFound, "no replica of \(key) here")
            }
        }
        appendedBytes += UInt64(payloadCount)
        wake(key)
        var response = Elasticstream_V1_AppendResponse()
        response.confirmedOffset = confirmed
        return try Frame(responseTo: frame, header: response)
    }

    /// The valid batch of range `key` at `position` of an append's payload.
    static func batch(in raw: UnsafeRawBufferPointer, at position: Int, of key: RangeKey) throws -> RecordBatchView {
        let rest = UnsafeRawBufferPointer(rebasing: raw[position...])
        let view: RecordBatchView
        do {
            let length = try RecordBatchView.batchLength(of: rest)
            guard length <= rest.count else {
                throw Refusal(.badRequest, "record batch at byte \(position) runs past the payload")
            }
            view = try RecordBatchView(validating: UnsafeRawBufferPointer(rebasing: rest[..<length]))
        } catch let error as RecordError {
            if case .checksumMismatch(let stored, let computed) = error {
                throw Refusal(.checksumMismatch, "record batch at byte \(position): stored checksum "
                              + "\(String(stored, radix: 16)), computed \(String(computed, radix: 16))")
            }
            if case .outOfRange = error { throw Refusal(.invalidArgument, "record batch at byte \(position): \(error)") }
            throw Refusal(.badRequest, "record batch at byte \(position): \(error)")
        }
        guard view.streamID == key.streamID, view.rangeIndex == key.index else {
            throw Refusal(.invalidArgument, "record batch at byte \(position) is of stream \(view.streamID) "
                          + "range \(view.rangeIndex), not \(key)")
        }
        return view
    }

    private func fetch(_ frame: Frame) async throws -> Frame {
        let request = try frame.header(as: Elasticstream_V1_FetchRequest.self)
        let key = RangeKey(streamID: request.streamID, index: request.rangeIndex)
        try FieldError.offset(request.startOffset, "start_offset")
        try FieldError.offset(request.endOffset, "end_offset")
        guard var description = store.describe(key) else { throw Refusal(.rangeNotFound, "no replica of \(key) here") }
        guard request.startOffset >= description.start else {
            throw Refusal(.offsetOutOfRange, "\(key) starts at \(description.start) here, after \(request.startOffset)")
        }
        let bound = request.endOffset == 0 ? UInt64.max : request.endOffset
        let wait = min(Duration.milliseconds(Int64(request.maxWaitMs)), configuration.maxFetchWait)
        let deadline = context.now + wait
        // Committed-only readers of an open range see no further than the writer's acknowledged end.
        func readable(_ description: RangeDescription) -> UInt64 {
            let end = Self.readable(description)
            guard request.committedOnly, description.sealedEnd == nil else { return end }
            return min(end, max(description.acknowledgedEnd, description.start))
        }
        // A tailing reader waits for records past the end (or for the seal) within its bound.
        while request.maxWaitMs > 0, request.startOffset >= readable(description), request.startOffset < bound,
              !Self.complete(description), context.now < deadline {
            await waitForChange(key, until: deadline)
            guard let refreshed = store.describe(key) else { throw Refusal(.rangeNotFound, "\(key) was deleted") }
            description = refreshed
        }
        var payload: [UInt8] = []
        var next = request.startOffset
        let limit = min(readable(description), bound)
        if request.startOffset < limit {
            // The answer must fit in a frame.
            let budget = min(max(Int(request.maxBytes), 1), configuration.maxFrameBytes - (64 << 10))
            let batches = try await store.read(key, from: request.startOffset, maxBytes: budget)
            for batch in batches {
                let base = batch.withUnsafeBytes { RecordBatchView(alreadyValidated: $0).baseOffset }
                let end = batch.withUnsafeBytes { RecordBatchView(alreadyValidated: $0).endOffset }
                if base >= limit { break }
                payload += batch
                next = end
            }
        }
        var response = Elasticstream_V1_FetchResponse()
        response.confirmedOffset = description.confirmedEnd
        response.nextOffset = next
        return try Frame(responseTo: frame, header: response, payload: payload)
    }

    /// One past the last record readable here.
    static func readable(_ description: RangeDescription) -> UInt64 {
        min(description.confirmedEnd, description.sealedEnd ?? .max)
    }

    /// Sealed and holding every record up to the seal: nothing more will arrive.
    static func complete(_ description: RangeDescription) -> Bool {
        guard let sealed = description.sealedEnd else { return false }
        return description.confirmedEnd >= sealed
    }

    private func createRange(_ frame: Frame) async throws -> Frame {
        let request = try frame.header(as: Elasticstream_V1_CreateRangeRequest.self)
        try request.range.validate()
        let key = RangeKey(streamID: request.range.streamID, index: request.range.index)
        try checkEpoch(request.epoch, of: key)
        do {
            try await store.createRange(key, start: request.range.startOffset)
        } catch .rangeConflict(_, let detail) {
            throw Refusal(.rangeAlreadyExists, "\(key): \(detail)")
        }
        if store.describe(key)?.isSealed == false, lastHeard[key] == nil { lastHeard[key] = context.now }
        var response = Elasticstream_V1_CreateRangeResponse()
        response.range = request.range
        return try Frame(responseTo: frame, header: response)
    }

    private func sealRange(_ frame: Frame) async throws -> Frame {
        let request = try frame.header(as: Elasticstream_V1_SealRangeRequest.self)
        try request.range.validate()
        let key = RangeKey(streamID: request.range.streamID, index: request.range.index)
        var range = request.range
        if request.range.sealed {
            try await seal(key, request.range)
        } else {
            // The fence is on disk before it is answered; a range not created here yet is fenced too. A fence of an
            // older epoch than one already here comes from a writer that is fenced itself.
            try checkEpoch(request.epoch, of: key)
            do {
                try await fences.fence(key, epoch: request.epoch)
            } catch {
                throw Refusal(.storageFailed, "the fence of \(key) could not be written: \(error)")
            }
            guard store.describe(key) != nil else { throw Refusal(.rangeNotFound, "no replica of \(key) here") }
            range.endOffset = try await store.fence(key)
            range.sealed = false
            wake(key)
        }
        var response = Elasticstream_V1_SealRangeResponse()
        response.range = range
        return try Frame(responseTo: frame, header: response)
    }

    /// Seals the replica at the range's end (creating it first if it never got the range), then repairs it from the
    /// other replicas if it holds less.
    private func seal(_ key: RangeKey, _ range: Elasticstream_V1_Range) async throws {
        let end = range.endOffset
        guard end >= range.startOffset else {
            throw Refusal(.invalidArgument, "\(key): end \(end) is before its start \(range.startOffset)")
        }
        if store.describe(key) == nil { try await store.createRange(key, start: range.startOffset) }
        _ = try await store.seal(key, at: end)
        lastHeard[key] = nil
        wake(key)
        if let description = store.describe(key), description.confirmedEnd < end {
            startRepair(key, end: end, servers: range.servers)
        }
    }

    /// Applies what reconciliation found (`Registrar.reconcile`): ranges sealed on the placement driver are sealed
    /// here (and repaired when this replica holds less); replicas of ranges that are gone are deleted.
    func reconcile(sealed: [Elasticstream_V1_Range], gone: [RangeKey]) async -> (sealed: Int, deleted: Int) {
        var sealedCount = 0
        var deleted = 0
        for range in sealed {
            let key = RangeKey(streamID: range.streamID, index: range.index)
            let local = store.describe(key)
            if local?.sealedEnd == range.endOffset && (local?.confirmedEnd ?? 0) >= range.endOffset { continue }
            if local?.sealedEnd == range.endOffset && repairing.contains(key) { continue }
            do {
                try await seal(key, range)
                sealedCount += 1
            } catch {
                logger.warning("could not apply the placement driver's seal", metadata: ["range": "\(key)", "error": "\(error)"])
            }
        }
        for key in gone {
            lastHeard[key] = nil
            do {
                try await store.delete(key)
                deleted += 1
            } catch {
                logger.warning("could not delete a replica of a range that is gone", metadata: ["range": "\(key)", "error": "\(error)"])
            }
        }
        if sealedCount + deleted > 0 {
            logger.info("replicas reconciled with the placement driver", metadata: ["sealed": "\(sealedCount)", "deleted": "\(deleted)"])
        }
        return (sealedCount, deleted)
    }

    /// Refuses a request of a writer older than the one that fenced the range.
    private func checkEpoch(_ epoch: UInt64, of key: RangeKey) throws(Refusal) {
        let fenced = fences.epoch(of: key)
        guard epoch >= fenced else {
            throw Refusal(.epochFenced, "\(key) was fenced by a writer of epoch \(fenced); this one has epoch \(epoch)")
        }
    }

    private func describeRange(_ frame: Frame) throws -> Frame {
        let request = try frame.header(as: Elasticstream_V1_DescribeRangeRequest.self)
        let key = RangeKey(streamID: request.streamID, index: request.rangeIndex)
        guard let description = store.describe(key) else { throw Refusal(.rangeNotFound, "no replica of \(key) here") }
        var response = Elasticstream_V1_DescribeRangeResponse()
        response.range.streamID = key.streamID
        response.range.index = key.index
        response.range.startOffset = description.start
        response.range.sealed = description.isSealed
        response.range.endOffset = description.sealedEnd ?? 0
        response.confirmedOffset = description.confirmedEnd
        response.acknowledgedOffset = description.acknowledgedEnd
        if !description.isSealed {
            let idle = context.now - (lastHeard[key] ?? context.now)
            response.writerIdleMs = idle.wholeNanoseconds / 1_000_000
        }
        return try Frame(responseTo: frame, header: response)
    }

    /// Open replicas whose writer has been silent for at least `lease`, longest silent first, at most `limit`.
    func silentWriters(lease: Duration, limit: Int) -> [(key: RangeKey, idle: Duration)] {
        let now = context.now
        var silent: [(key: RangeKey, idle: Duration)] = []
        for (key, heard) in lastHeard where now - heard >= lease {
            guard let description = store.describe(key), !description.isSealed else {
                lastHeard[key] = nil
                continue
            }
            silent.append((key, now - heard))
        }
        silent.sort { $0.idle > $1.idle }
        return Array(silent.prefix(limit))
    }

    // MARK: - Waiting readers

    private func waitForChange(_ key: RangeKey, until deadline: Instant) async {
        let id = nextWaiter
        nextWaiter += 1
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            waiting[id] = (continuation, deadline)
            waiters[key, default: []].append(id)
            startSweeping()
        }
    }

    func wake(_ key: RangeKey) {
        guard let ids = waiters.removeValue(forKey: key) else { return }
        for id in ids { waiting.removeValue(forKey: id)?.continuation.resume() }
    }

    private func startSweeping() {
        guard !sweeping else { return }
        sweeping = true
        let bound = ShardBound(self)
        context.spawn {
            let service = bound.value
            while !service.waiting.isEmpty {
                try? await service.context.sleep(for: .milliseconds(10))
                let now = service.context.now
                var expired: [UInt64] = []
                for (id, entry) in service.waiting where entry.deadline <= now { expired.append(id) }
                for id in expired { service.waiting.removeValue(forKey: id)?.continuation.resume() }
                if !expired.isEmpty {
                    let gone = Set(expired)
                    for key in Array(service.waiters.keys) {
                        service.waiters[key]?.removeAll { gone.contains($0) }
                        if service.waiters[key]?.isEmpty == true { service.waiters[key] = nil }
                    }
                }
            }
            service.sweeping = false
        }
    }

    // MARK: - Repair

    /// Copies the records a sealed replica missed from the other replicas, one FETCH at a time, until it holds
    /// everything up to the seal (retrying with backoff while no peer has them).
    private func startRepair(_ key: RangeKey, end: UInt64, servers: [Elasticstream_V1_RangeServer]) {
        guard !repairing.contains(key) else { return }
        repairing.insert(key)
        // A few repairs at a time per shard: each holds a fetched megabyte, and peers bound what they serve.
        guard activeRepairs < Self.maxConcurrentRepairs else {
            queuedRepairs.append((key, end, servers))
            return
        }
        runRepair(key, end: end, servers: servers)
    }

    static let maxConcurrentRepairs = 4

    private func runRepair(_ key: RangeKey, end: UInt64, servers: [Elasticstream_V1_RangeServer]) {
        activeRepairs += 1
        let others = servers.filter { $0.serverID != serverID && !$0.shardAddresses.isEmpty }
        logger.info("repairing a sealed range from its peers", metadata: [
            "range": "\(key)", "end": "\(end)", "peers": "\(others.map(\.serverID))",
        ])
        let bound = ShardBound(self)
        context.spawn {
            let service = bound.value
            await service.repair(key, end: end, peers: others)
            service.repairing.remove(key)
            service.activeRepairs -= 1
            if !service.queuedRepairs.isEmpty {
                let (nextKey, nextEnd, nextServers) = service.queuedRepairs.removeFirst()
                service.runRepair(nextKey, end: nextEnd, servers: nextServers)
            }
        }
    }

    private func repair(_ key: RangeKey, end: UInt64, peers: [Elasticstream_V1_RangeServer]) async {
        var backoff = Duration.milliseconds(50)
        var attempts = 0
        while accepting, let description = store.describe(key), description.confirmedEnd < end {
            attempts += 1
            var progressed = false
            for peer in peers {
                let shard = RangeRouting.shard(streamID: key.streamID, rangeIndex: key.index,
                                               shardCount: peer.shardAddresses.count)
                let address = peer.shardAddresses[shard]
                let client = peerClient(address)
                var request = Elasticstream_V1_FetchRequest()
                request.streamID = key.streamID
                request.rangeIndex = key.index
                guard let from = store.describe(key)?.confirmedEnd, from < end else { return }
                request.startOffset = from
                request.endOffset = end
                request.maxBytes = 1 << 20
                guard case .success(let answer) = await client.call(.fetch, header: request, timeout: .seconds(5)) else {
                    continue
                }
                let payload = Array(answer.payload)
                let stable = UnsafeMutableRawBufferPointer.allocate(byteCount: max(payload.count, 1), alignment: 8)
                defer { stable.deallocate() }
                stable.copyBytes(from: payload)
                let raw = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(stable)[..<payload.count])
                var position = 0
                while position < raw.count {
                    let rest = UnsafeRawBufferPointer(rebasing: raw[position...])
                    guard let length = try? RecordBatchView.batchLength(of: rest), length <= rest.count,
                          let view = try? RecordBatchView(validating: UnsafeRawBufferPointer(rebasing: rest[..<length]))
                    else {
                        logger.warning("a peer sent a damaged batch during repair", metadata: ["range": "\(key)"])
                        break
                    }
                    position += length
                    guard let outcome = try? await store.repair(view) else { break }
                    if case .committed = outcome { progressed = true } else if case .alreadyCommitted = outcome {
                    } else { break }
                }
                wake(key)
                if progressed { break }
            }
            if !progressed {
                if attempts % 20 == 1 {
                    logger.warning("no peer could repair the range yet", metadata: ["range": "\(key)", "end": "\(end)"])
                }
                try? await context.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(2))
            }
        }
        if let description = store.describe(key), description.confirmedEnd >= end {
            logger.info("range repaired", metadata: ["range": "\(key)", "end": "\(end)"])
        }
    }

    private func peerClient(_ address: String) -> RPCClient {
        if let client = peers[address] { return client }
        let client = RPCClient(address: address, on: context, limits: limits)
        peers[address] = client
        return client
    }

    // MARK: - Stop

    /// Stops accepting, tells every client to go away, waits for the requests in flight (at most `drain_timeout`),
    /// then closes the connections and the store (`FrameServer.stop`).
    func stop() async {
        accepting = false
        await frameServer?.stop(drainTimeout: configuration.drainTimeout)
        for client in peers.values { await client.close() }
        // Readers still waiting get their (empty) answers.
        for (_, entry) in waiting { entry.continuation.resume() }
        waiting = [:]
        waiters = [:]
        await fences.close()
        await store.close()
    }
}

@available(*, unavailable)
extension ShardService: Sendable {}
