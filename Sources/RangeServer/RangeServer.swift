import Foundation
import Logging
import PlacementDriver
import Platform
import Reactor
import Store
import Transport
import Wire

/// The range server of a process: one `ShardService` per shard (each with its own store and port), registration with
/// the placement driver, a heartbeat with the server's load, and a clean stop. Start and stop it from a shard of its
/// reactor.
public final class RangeServer: Sendable {
    public let configuration: RangeServerConfiguration
    let reactor: Reactor
    let services: [ShardBound<ShardService>]
    let registrar: ShardBound<Registrar>

    private init(configuration: RangeServerConfiguration, reactor: Reactor, services: [ShardBound<ShardService>],
                 registrar: ShardBound<Registrar>) {
        self.configuration = configuration
        self.reactor = reactor
        self.services = services
        self.registrar = registrar
    }

    /// Opens every shard's store, listens on every shard's port, starts serving, and registers with the placement
    /// driver in the background (retrying until it answers). Call from shard 0.
    public static func start(_ configuration: RangeServerConfiguration, placementDriver: [String], reactor: Reactor,
                             on context: ShardContext) async throws -> RangeServer
    {
        precondition(context.shardIndex == 0, "start the range server from shard 0")
        try await checkShardCount(reactor.shardCount, in: configuration.dataDirectory, on: context)
        var services: [ShardBound<ShardService>] = []
        for index in 0..<reactor.shardCount {
            let service = try await reactor.run(on: index) { shard in
                let fences = try await FenceTable.load(path: "\(configuration.dataDirectory)/fences-\(index)",
                                                       context: shard)
                let store = try await ShardStore.open(configuration.store(shard: index), on: shard)
                let listener: TCPListener
                do {
                    listener = try shard.listen(host: configuration.host, port: UInt16(Int(configuration.port) + index))
                } catch {
                    await store.close()
                    throw error
                }
                return ShardBound(ShardService(index: index, context: shard, store: store, listener: listener,
                                               configuration: configuration, fences: fences))
            }
            services.append(service)
        }
        let table = services
        for index in 0..<reactor.shardCount {
            try await reactor.run(on: index) { _ in
                let service = table[index].value
                service.shardCount = table.count
                service.forward = { owner, frame in
                    do {
                        return try await reactor.run(on: owner) { _ in await table[owner].value.respond(to: frame) }
                    } catch {
                        return Frame(errorTo: frame, status: ShardService.status(.shuttingDown, "shard \(owner) is stopping"))
                    }
                }
                service.start()
            }
        }
        let storedID = try await Registrar.storedID(configuration.dataDirectory, on: context)
        let registrar = Registrar(configuration: configuration, placementDriver: placementDriver, reactor: reactor,
                                  services: table, context: context, storedID: storedID)
        let server = RangeServer(configuration: configuration, reactor: reactor, services: table,
                                 registrar: ShardBound(registrar))
        registrar.start()
        return server
    }

    /// The address of every shard, in shard order.
    public var shardAddresses: [String] { (0..<services.count).map { configuration.shardAddress($0) } }

    /// The id the placement driver gave this server (0 until registered).
    public var serverID: UInt64 { registrar.value.serverID }

    /// Reports the server offline, tells clients to go away, drains and closes every shard. Call from shard 0.
    public func stop() async {
        await registrar.value.stop()
        for index in 0..<services.count {
            let services = services
            _ = try? await reactor.run(on: index) { _ in await services[index].value.stop() }
        }
    }
}

/// Registers the server with the placement driver (keeping its id in `data_dir/server-id` across restarts) and sends
/// heartbeats with its load. Runs on shard 0. Shard-bound.
final class Registrar {
    let configuration: RangeServerConfiguration
    let pd: PDClient
    let reactor: Reactor
    let services: [ShardBound<ShardService>]
    let context: ShardContext
    let logger = Logger(label: "elastic-stream.range-server")
    var serverID: UInt64 = 0
    private var idStored = false
    private var stopped = false
    private var task: Task<Void, Error>?
    private var reconcileTask: Task<Void, Error>?
    private var leaseTask: Task<Void, Error>?
    private var lastBeat: Instant
    let leases: WriterLeases
    /// Reconciliations that failed in a row (each is retried sooner than the interval).
    private(set) var reconcileFailures = 0
    /// Completed reconciliations since start.
    private(set) var reconciliations = 0

    init(configuration: RangeServerConfiguration, placementDriver: [String], reactor: Reactor,
         services: [ShardBound<ShardService>], context: ShardContext, storedID: UInt64?) {
        self.configuration = configuration
        pd = PDClient(addresses: placementDriver, on: context, timeout: .seconds(2))
        self.reactor = reactor
        self.services = services
        self.context = context
        lastBeat = context.now
        serverID = storedID ?? 0
        idStored = serverID != 0
        leases = WriterLeases(configuration: configuration, pd: pd, reactor: reactor, services: services,
                              context: context)
    }

    static func storedID(_ directory: String, on context: ShardContext) async throws -> UInt64? {
        guard let bytes = try await context.readWholeFile("\(directory)/server-id", limit: 4096) else { return nil }
        // A file that is there but does not hold an id is damage, not a new server: registering afresh would give
        // the node a new identity and orphan every replica it holds.
        guard let id = UInt64(String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)),
              id > 0
        else {
            throw RangeServerStartError(description: "\(directory)/server-id is corrupt (\(bytes.count) bytes that are "
                                        + "not a server id); restore it, or move the data directory away to start "
                                        + "as a new server")
        }
        return id
    }

    func start() {
        let bound = ShardBound(self)
        task = context.spawn { await bound.value.run() }
    }

    /// Registers (again) with the stored id until the placement driver answers; keeps the id it gives durably.
    /// False when the server stopped first.
    private func register() async -> Bool {
        var backoff = Duration.milliseconds(100)
        while !stopped {
            var request = Elasticstream_V1_RegisterRangeServerRequest()
            request.server.serverID = serverID
            request.server.shardAddresses = (0..<services.count).map { configuration.shardAddress($0) }
            do {
                let response = try await pd.call(.registerRangeServer, request,
                                                 as: Elasticstream_V1_RegisterRangeServerResponse.self)
                if response.serverID != serverID || !idStored {
                    // Registering again with this id is idempotent: a failed write is retried with it.
                    serverID = response.serverID
                    try await Self.storeID(response.serverID, in: configuration.dataDirectory, on: context)
                    idStored = true
                }
                let id = serverID
                for index in 0..<services.count {
                    let services = services
                    _ = try? await reactor.run(on: index) { _ in services[index].value.serverID = id }
                }
                logger.info("range server registered", metadata: ["server": "\(serverID)",
                                                                  "shards": "\(configuration.shardAddress(0))..."])
                return true
            } catch {
                logger.warning("registration with the placement driver failed; retrying", metadata: ["error": "\(error)"])
                try? await context.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(2))
            }
        }
        return false
    }

    /// Writes the server id through a temporary file, synced, renamed, with the directory synced: a server that
    /// forgot its id would come back as another server.
    static func storeID(_ id: UInt64, in directory: String, on context: ShardContext) async throws {
        try await context.createDirectory(directory)
        try await context.writeDurably(Array("\(id)\n".utf8), to: "\(directory)/server-id")
    }

    private func run() async {
        guard await register() else { return }
        let bound = ShardBound(self)
        // Reconciliation may take a while (seals, repairs): it runs beside the heartbeats, not between them.
        reconcileTask = context.spawn { await bound.value.reconcileLoop() }
        leaseTask = context.spawn { await bound.value.leaseLoop() }
        while !stopped {
            try? await context.sleep(for: configuration.heartbeatInterval)
            if stopped { break }
            do {
                try await heartbeat(.serverOnline)
            } catch {
                // The placement driver does not know this server (its state was lost or restored): register again.
                if error.code == .serverNotFound {
                    logger.warning("the placement driver does not know this server; registering again")
                    guard await register() else { return }
                }
            }
        }
    }

    /// Reconciles every `reconcile_interval`; a failed reconciliation is retried after 1 s, then 2, 4… (never
    /// later than the interval), and every failure is logged with how many came in a row.
    private func reconcileLoop() async {
        while !stopped {
            let clock = context.now
            do {
                let (sealed, deleted, listed) = try await reconcile()
                if reconcileFailures > 0 || sealed + deleted > 0 {
                    logger.info("reconciled with the placement driver", metadata: [
                        "listed": "\(listed)", "sealed": "\(sealed)", "deleted": "\(deleted)",
                        "after_failures": "\(reconcileFailures)", "ms": "\((context.now - clock).wholeNanoseconds / 1_000_000)",
                    ])
                }
                reconcileFailures = 0
                reconciliations += 1
                try? await context.sleep(for: configuration.reconcileInterval)
            } catch {
                reconcileFailures += 1
                logger.warning("reconciliation with the placement driver failed; retrying", metadata: [
                    "error": "\(error)", "failures_in_a_row": "\(reconcileFailures)",
                ])
                let backoff = Duration.seconds(1 << min(reconcileFailures - 1, 5))
                try? await context.sleep(for: min(backoff, configuration.reconcileInterval))
            }
        }
    }

    /// Every quarter lease (at least 250 ms), seals ranges whose writer is gone (`WriterLeases`).
    private func leaseLoop() async {
        let interval = max(configuration.writerLease / 4, .milliseconds(250))
        while !stopped {
            try? await context.sleep(for: interval)
            if stopped { break }
            await leases.sweep(serverID: serverID) { [unowned self] in self.stopped }
        }
    }

    /// Takes every shard's replicas, then the placement driver's ranges for this server, a page at a time. Each
    /// shard seals (and repairs) the ranges sealed there, page by page. A replica the placement driver does not list
    /// for this server is deleted only on positive evidence that its range is gone: its stream is marked deleted, or
    /// the stream's ranges now start past it (trimmed). A stream the placement driver does not know at all is kept
    /// (its state may have been lost) and reported. Throws when the placement driver cannot be read.
    private func reconcile() async throws(PDError) -> (sealed: Int, deleted: Int, listed: Int) {
        var held: [[RangeKey]] = []
        for index in 0..<services.count {
            let services = services
            held.append((try? await reactor.submit(to: index) { services[index].value.store.rangeKeys }) ?? [])
        }
        let count = services.count
        var listedKeys = Set<RangeKey>()
        var sealed = 0
        var deleted = 0
        var request = Elasticstream_V1_ListRangesRequest()
        request.serverID = serverID
        request.limit = UInt32(Self.reconcilePage)
        while !stopped {
            let page = try await pd.call(.listRanges, request, as: Elasticstream_V1_ListRangesResponse.self)
            // The placement driver's numbers are checked like any peer's before they are used.
            for (i, range) in page.ranges.enumerated() {
                do {
                    try range.validate("ranges[\(i)]")
                } catch {
                    throw PDError(.dataCorrupted, "the placement driver listed a bad range: \(error)")
                }
            }
            for range in page.ranges { listedKeys.insert(RangeKey(streamID: range.streamID, index: range.index)) }
            for index in 0..<count {
                let mine = page.ranges.filter {
                    $0.sealed && RangeRouting.shard(streamID: $0.streamID, rangeIndex: $0.index, shardCount: count) == index
                }
                guard !mine.isEmpty else { continue }
                let services = services
                let result = try? await reactor.run(on: index) { _ in
                    await services[index].value.reconcile(sealed: mine, gone: [])
                }
                sealed += result?.sealed ?? 0
            }
            guard page.more, let last = page.ranges.last else { break }
            request.startStreamID = last.streamID
            request.startIndex = last.index + 1
        }
        var gone: Set<RangeKey> = []
        let unlisted = held.joined().filter { !listedKeys.contains($0) }
        for (stream, keys) in Dictionary(grouping: unlisted, by: \.streamID) {
            var describe = Elasticstream_V1_DescribeStreamRequest()
            describe.streamID = stream
            do {
                let record = try await pd.call(.describeStream, describe, as: Elasticstream_V1_DescribeStreamResponse.self)
                if record.stream.deleted {
                    gone.formUnion(keys)
                    continue
                }
                // The stream's first range: replicas below it were trimmed away.
                var list = Elasticstream_V1_ListRangesRequest()
                list.streamID = stream
                list.limit = 1
                let ranges = try await pd.call(.listRanges, list, as: Elasticstream_V1_ListRangesResponse.self).ranges
                guard let first = ranges.first?.index else { continue }
                gone.formUnion(keys.filter { $0.index < first })
            } catch {
                if error.code == .streamNotFound {
                    logger.error("replicas of a stream the placement driver does not know are kept",
                                 metadata: ["stream": "\(stream)", "replicas": "\(keys.count)"])
                } else {
                    throw error
                }
            }
        }
        for index in 0..<count {
            let doomed = held[index].filter { gone.contains($0) }
            guard !doomed.isEmpty else { continue }
            let services = services
            let result = try? await reactor.run(on: index) { _ in await services[index].value.reconcile(sealed: [], gone: doomed) }
            deleted += result?.deleted ?? 0
        }
        return (sealed, deleted, listedKeys.count)
    }

    /// Ranges per LIST_RANGES page during reconciliation.
    static let reconcilePage = 2_000

    private func heartbeat(_ state: Elasticstream_V1_ServerState) async throws(PDError) {
        var ranges: UInt64 = 0
        var bytes: UInt64 = 0
        for index in 0..<services.count {
            let services = services
            let (count, appended) = (try? await reactor.submit(to: index) { () -> (Int, UInt64) in
                let service = services[index].value
                let appended = service.appendedBytes
                service.appendedBytes = 0
                return (service.store.rangeCount, appended)
            }) ?? (0, 0)
            ranges += UInt64(count)
            bytes += appended
        }
        let elapsed = max(context.now - lastBeat, .milliseconds(1))
        lastBeat = context.now
        var request = Elasticstream_V1_RangeServerHeartbeatRequest()
        request.serverID = serverID
        request.state = state
        request.load.ranges = ranges
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        request.load.appendBytesPerSecond = UInt64(Double(bytes) / seconds)
        _ = try await pd.call(.rangeServerHeartbeat, request, as: Elasticstream_V1_RangeServerHeartbeatResponse.self)
    }

    func stop() async {
        stopped = true
        task?.cancel()
        reconcileTask?.cancel()
        leaseTask?.cancel()
        await leases.close()
        if serverID != 0 {
            pd.timeout = .seconds(1)
            do {
                try await heartbeat(.serverOffline)
                logger.info("reported offline to the placement driver", metadata: ["server": "\(serverID)"])
            } catch {
                logger.warning("could not report offline", metadata: ["error": "\(error)"])
            }
        }
        await pd.close()
    }
}

@available(*, unavailable)
extension Registrar: Sendable {}

/// Why the range server cannot start on its data directory.
public struct RangeServerStartError: Error, CustomStringConvertible {
    public let description: String
}

/// Ranges live on the shard their hash picks among `count` shards: a data directory written with another shard count
/// holds its replicas on the wrong shards, so the server refuses it (with the count it needs) rather than serve
/// (and reconcile) them as missing.
func checkShardCount(_ count: Int, in directory: String, on context: ShardContext) async throws {
    let path = "\(directory)/shards"
    if let bytes = try await context.readWholeFile(path, limit: 4096) {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let stored = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw RangeServerStartError(description: "\(path) is corrupt (\(bytes.count) bytes that are not a shard "
                                        + "count); write into it the shard count this data directory was made with")
        }
        guard stored == count else {
            throw RangeServerStartError(description: "\(directory) was written by a range server with \(stored) shards; "
                                        + "this configuration has \(count) (set [reactor] cpus to \(stored) CPUs, or use another data_dir)")
        }
        return
    }
    try await context.createDirectory(directory)
    try await context.writeDurably(Array("\(count)\n".utf8), to: path)
}

