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
        var services: [ShardBound<ShardService>] = []
        for index in 0..<reactor.shardCount {
            let service = try await reactor.run(on: index) { shard in
                let store = try await ShardStore.open(configuration.store(shard: index), on: shard)
                let listener: TCPListener
                do {
                    listener = try shard.listen(host: configuration.host, port: UInt16(Int(configuration.port) + index))
                } catch {
                    await store.close()
                    throw error
                }
                return ShardBound(ShardService(index: index, context: shard, store: store, listener: listener,
                                               configuration: configuration))
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
        let registrar = Registrar(configuration: configuration, placementDriver: placementDriver, reactor: reactor,
                                  services: table, context: context)
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
    private var stopped = false
    private var task: Task<Void, Error>?
    private var lastBeat: Instant

    init(configuration: RangeServerConfiguration, placementDriver: [String], reactor: Reactor,
         services: [ShardBound<ShardService>], context: ShardContext) {
        self.configuration = configuration
        pd = PDClient(addresses: placementDriver, on: context, timeout: .seconds(2))
        self.reactor = reactor
        self.services = services
        self.context = context
        lastBeat = context.now
        serverID = Self.storedID(configuration.dataDirectory) ?? 0
    }

    static func storedID(_ directory: String) -> UInt64? {
        guard let text = try? String(contentsOfFile: "\(directory)/server-id", encoding: .utf8) else { return nil }
        return UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    func start() {
        let bound = ShardBound(self)
        task = context.spawn { await bound.value.run() }
    }

    private func run() async {
        var backoff = Duration.milliseconds(100)
        while !stopped {
            var request = Elasticstream_V1_RegisterRangeServerRequest()
            request.server.serverID = serverID
            request.server.shardAddresses = (0..<services.count).map { configuration.shardAddress($0) }
            do {
                let response = try await pd.call(.registerRangeServer, request,
                                                 as: Elasticstream_V1_RegisterRangeServerResponse.self)
                serverID = response.serverID
                break
            } catch {
                logger.warning("registration with the placement driver failed; retrying", metadata: ["error": "\(error)"])
                try? await context.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(2))
            }
        }
        guard !stopped else { return }
        do {
            try FileManager.default.createDirectory(atPath: configuration.dataDirectory, withIntermediateDirectories: true)
            try "\(serverID)\n".write(toFile: "\(configuration.dataDirectory)/server-id", atomically: true, encoding: .utf8)
        } catch {
            logger.error("cannot keep the server id", metadata: ["error": "\(error)"])
        }
        let id = serverID
        for index in 0..<services.count {
            let services = services
            _ = try? await reactor.run(on: index) { _ in services[index].value.serverID = id }
        }
        logger.info("range server registered", metadata: ["server": "\(serverID)",
                                                          "shards": "\(configuration.shardAddress(0))..."])
        var lastReconcile: Instant?
        while !stopped {
            if lastReconcile.map({ context.now - $0 >= configuration.reconcileInterval }) ?? true {
                lastReconcile = context.now
                await reconcile()
            }
            try? await context.sleep(for: configuration.heartbeatInterval)
            if stopped { break }
            _ = try? await heartbeat(.serverOnline)
        }
    }

    /// Takes every shard's replicas, then the placement driver's ranges for this server, and hands each shard its
    /// part (`ShardService.reconcile`).
    private func reconcile() async {
        var held: [[RangeKey]] = []
        for index in 0..<services.count {
            let services = services
            held.append((try? await reactor.submit(to: index) { services[index].value.store.rangeKeys }) ?? [])
        }
        var request = Elasticstream_V1_ListRangesRequest()
        request.serverID = serverID
        let listed: [Elasticstream_V1_Range]
        do {
            listed = try await pd.call(.listRanges, request, as: Elasticstream_V1_ListRangesResponse.self).ranges
        } catch {
            logger.warning("could not list this server's ranges", metadata: ["error": "\(error)"])
            return
        }
        let count = services.count
        for index in 0..<count {
            let mine = listed.filter {
                RangeRouting.shard(streamID: $0.streamID, rangeIndex: $0.index, shardCount: count) == index
            }
            let services = services
            let keys = held[index]
            _ = try? await reactor.run(on: index) { _ in await services[index].value.reconcile(listed: mine, held: keys) }
        }
    }

    private func heartbeat(_ state: Elasticstream_V1_ServerState) async throws(PDError) {
        var ranges: UInt64 = 0
        var bytes: UInt64 = 0
        for index in 0..<services.count {
            let services = services
            let (count, appended) = (try? await reactor.submit(to: index) { () -> (Int, UInt64) in
                let service = services[index].value
                let appended = service.appendedBytes
                service.appendedBytes = 0
                return (service.store.rangeKeys.count, appended)
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
