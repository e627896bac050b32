import Logging
import Platform
import Reactor
import Records
import Store
import SwiftProtobuf
import Transport
import Wire

/// Keeping replicas whole: reconciliation with the placement driver, the writers' leases, and repair from peers.
extension ShardService {
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

    // MARK: - Repair

    /// Copies the records a sealed replica missed from the other replicas, one FETCH at a time, until it holds
    /// everything up to the seal (retrying with backoff while no peer has them).
    func startRepair(_ key: RangeKey, end: UInt64, servers: [Elasticstream_V1_RangeServer]) {
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

    func runRepair(_ key: RangeKey, end: UInt64, servers: [Elasticstream_V1_RangeServer]) {
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

    func repair(_ key: RangeKey, end: UInt64, peers: [Elasticstream_V1_RangeServer]) async {
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

    func peerClient(_ address: String) -> RPCClient {
        if let client = peers[address] { return client }
        let client = RPCClient(address: address, on: context, limits: limits)
        peers[address] = client
        return client
    }
}
