import Logging
import PlacementDriver
import Platform
import Reactor
import Store
import Transport
import Wire

/// Seals ranges whose writer is gone. A writer sends its replicas an APPEND at least every second (records or not);
/// an open replica that has heard nothing for `writer_lease` is a candidate. The server then asks the placement
/// driver about the range: sealed there (this replica missed it) means sealing and repairing here; still open and
/// silent on every replica that answers means the writer is gone, and the server does what a new writer would:
/// takes a new epoch (OPEN_STREAM, which fences the old writer at the placement driver), fences the replicas,
/// seals the range at the end a quorum confirms (`ReplicaQuorum`) on the placement driver, and tells the replicas.
/// It starts no new range: the next writer does. Replicas act in the order the range lists its servers, half a
/// lease apart, so that usually one of them does it. Runs on shard 0, one candidate at a time. Shard-bound.
final class WriterLeases {
    let configuration: RangeServerConfiguration
    let pd: PDClient
    let reactor: Reactor
    let services: [ShardBound<ShardService>]
    let context: ShardContext
    let logger = Logger(label: "elastic-stream.range-server")
    private var peers: [String: RPCClient] = [:]
    /// Ranges sealed here because their writer's lease lapsed, since start.
    private(set) var sealed = 0
    /// Candidates looked at per sweep, at most.
    static let maxPerSweep = 256

    init(configuration: RangeServerConfiguration, pd: PDClient, reactor: Reactor, services: [ShardBound<ShardService>],
         context: ShardContext) {
        self.configuration = configuration
        self.pd = pd
        self.reactor = reactor
        self.services = services
        self.context = context
    }

    var lease: Duration { configuration.writerLease }

    /// One sweep: every shard's silent writers, each looked at in turn. `serverID` is this server's.
    func sweep(serverID: UInt64, stopped: () -> Bool) async {
        var candidates: [(key: RangeKey, idle: Duration)] = []
        let lease = lease
        for index in 0..<services.count {
            let services = services
            candidates += (try? await reactor.submit(to: index) {
                services[index].value.silentWriters(lease: lease, limit: WriterLeases.maxPerSweep)
            }) ?? []
        }
        candidates.sort { $0.idle > $1.idle }
        for candidate in candidates.prefix(Self.maxPerSweep) {
            if stopped() { return }
            await look(at: candidate.key, idle: candidate.idle, serverID: serverID)
        }
    }

    private func owner(of key: RangeKey) -> Int {
        RangeRouting.shard(streamID: key.streamID, rangeIndex: key.index, shardCount: services.count)
    }

    /// Applies the placement driver's seal of `range` on this server's replica (and repairs it).
    private func applySeal(_ range: Elasticstream_V1_Range) async {
        let key = RangeKey(streamID: range.streamID, index: range.index)
        let index = owner(of: key)
        let services = services
        _ = try? await reactor.run(on: index) { _ in await services[index].value.reconcile(sealed: [range], gone: []) }
    }

    private func look(at key: RangeKey, idle: Duration, serverID: UInt64) async {
        var list = Elasticstream_V1_ListRangesRequest()
        list.streamID = key.streamID
        list.startIndex = key.index
        list.limit = 1
        let range: Elasticstream_V1_Range
        do {
            let page = try await pd.call(.listRanges, list, as: Elasticstream_V1_ListRangesResponse.self)
            // Trimmed away or unknown: reconciliation decides what to do with the replica; look again a lease later.
            guard let first = page.ranges.first, first.index == key.index else {
                await postpone(key)
                return
            }
            range = first
        } catch {
            await postpone(key)
            return
        }
        if range.sealed {
            await applySeal(range)
            return
        }
        // The first listed replica acts after one lease, the next after one and a half, and so on.
        let position = range.servers.firstIndex { $0.serverID == serverID } ?? 0
        guard idle >= lease + lease * (Double(position) / 2) else { return }
        // Every replica that answers must agree that the writer is silent: the writer may have stopped sending to
        // this one alone (it marked it failed).
        let leaseMs = lease.wholeNanoseconds / 1_000_000
        for server in range.servers where server.serverID != serverID {
            guard let address = Self.address(of: server, for: key) else { continue }
            var describe = Elasticstream_V1_DescribeRangeRequest()
            describe.streamID = key.streamID
            describe.rangeIndex = key.index
            guard case .success(let frame) = await peer(address).call(.describeRange, header: describe,
                                                                     timeout: .seconds(1)),
                  let answer = try? frame.header(as: Elasticstream_V1_DescribeRangeResponse.self)
            else { continue }
            if answer.range.sealed || answer.writerIdleMs < leaseMs { return }
        }
        await takeOver(range, key: key)
    }

    /// Seals an open range whose writer is gone, as a new writer would.
    private func takeOver(_ range: Elasticstream_V1_Range, key: RangeKey) async {
        var open = Elasticstream_V1_OpenStreamRequest()
        open.streamID = key.streamID
        let opened: Elasticstream_V1_OpenStreamResponse
        do {
            opened = try await pd.call(.openStream, open, as: Elasticstream_V1_OpenStreamResponse.self)
        } catch {
            logger.warning("could not open a stream whose writer is silent", metadata: [
                "range": "\(key)", "error": "\(error)",
            ])
            return
        }
        guard let last = opened.ranges.last, last.index == key.index else { return }
        if last.sealed {
            await applySeal(last)
            return
        }
        let epoch = opened.stream.epoch
        var fence = Elasticstream_V1_SealRangeRequest()
        fence.range = last
        fence.range.sealed = false
        fence.epoch = epoch
        var ends: [UInt64] = []
        for server in last.servers {
            guard let address = Self.address(of: server, for: key) else { continue }
            switch await peer(address).call(.sealRange, header: fence, timeout: .seconds(2)) {
            case .success(let frame):
                if let answer = try? frame.header(as: Elasticstream_V1_SealRangeResponse.self) {
                    ends.append(answer.range.endOffset)
                }
            case .failure(.refused(.rangeNotFound, _)):
                ends.append(last.startOffset)
            case .failure:
                break
            }
        }
        let replicas = last.servers.count
        let acks = Int(last.ackCount == 0 ? opened.stream.ackCount : last.ackCount)
        guard let end = ReplicaQuorum.sealEnd(ends: ends, replicaCount: replicas, ackCount: min(max(acks, 1), replicas))
        else {
            logger.warning("too few replicas answered to seal a range whose writer is gone", metadata: [
                "range": "\(key)", "answers": "\(ends.count)", "replicas": "\(replicas)",
            ])
            return
        }
        var seal = Elasticstream_V1_SealRangeRequest()
        seal.range = last
        seal.range.endOffset = max(end, last.startOffset)
        seal.range.sealed = true
        seal.epoch = epoch
        let sealedRange: Elasticstream_V1_Range
        do {
            sealedRange = try await pd.call(.pdSealRange, seal, as: Elasticstream_V1_SealRangeResponse.self).range
        } catch {
            // Another writer took the stream meanwhile (EPOCH_FENCED): it seals the range itself.
            logger.warning("could not seal a range whose writer is gone", metadata: ["range": "\(key)", "error": "\(error)"])
            return
        }
        var tell = Elasticstream_V1_SealRangeRequest()
        tell.range = sealedRange
        tell.epoch = epoch
        for server in sealedRange.servers {
            guard let address = Self.address(of: server, for: key) else { continue }
            _ = await peer(address).call(.sealRange, header: tell, timeout: .seconds(2))
        }
        sealed += 1
        logger.info("sealed a range whose writer is gone", metadata: [
            "range": "\(key)", "end": "\(sealedRange.endOffset)", "ends": "\(ends)",
        ])
    }

    /// Counts the writer of `key` as heard now, so the range is looked at again only a lease later.
    private func postpone(_ key: RangeKey) async {
        let index = owner(of: key)
        let services = services
        _ = try? await reactor.submit(to: index) {
            let service = services[index].value
            if service.lastHeard[key] != nil { service.lastHeard[key] = service.context.now }
        }
    }

    static func address(of server: Elasticstream_V1_RangeServer, for key: RangeKey) -> String? {
        guard !server.shardAddresses.isEmpty else { return nil }
        return server.shardAddresses[RangeRouting.shard(streamID: key.streamID, rangeIndex: key.index,
                                                        shardCount: server.shardAddresses.count)]
    }

    private func peer(_ address: String) -> RPCClient {
        if let client = peers[address] { return client }
        let client = RPCClient(address: address, on: context)
        peers[address] = client
        return client
    }

    func close() async {
        for client in peers.values { await client.close() }
        peers = [:]
    }
}

@available(*, unavailable)
extension WriterLeases: Sendable {}
