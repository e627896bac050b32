import Client
import PlacementDriverClient
import Reactor
import Records
import Simulation
import SwiftProtobuf
import Transport
import Wire

/// Replica convergence: once everything has healed, every replica of every sealed range holds the same records, all
/// of them, byte for byte, and they are the records the stream reads gave. Each replica is asked directly (FETCH to
/// the shard that owns the range on that server); one that lacks records is told the seal, which starts its repair
/// from its peers, and asked again for a while.
enum ReplicaCheck {
    struct Outcome {
        var rangesChecked = 0
        var replicasChecked = 0
        var replicasSkipped = 0
        /// Each with the host of the replica it is about.
        var problems: [(host: String, message: String)] = []
    }

    /// `skip` names hosts not to ask (a node down for good, as far as can be told when its replicas come up).
    /// `starts` gives where each stream starts after its trims: records below are not asked for.
    static func run(client: ElasticStreamClient, streams: [UInt64], read: [UInt64: [ReadRecord]],
                    starts: [UInt64: UInt64], skip: (String) -> Bool, context: ShardContext) async -> Outcome {
        var outcome = Outcome()
        var connections: [String: RPCClient] = [:]
        func connection(_ address: String) -> RPCClient {
            if let known = connections[address] { return known }
            let made = RPCClient(address: address, on: context)
            connections[address] = made
            return made
        }
        for stream in streams {
            var ranges: [RangeRecord] = []
            for attempt in 0..<20 {
                do {
                    ranges = try await client.ranges(of: stream)
                    break
                } catch {
                    if attempt == 19 { outcome.problems.append(("", "stream \(stream): listing its ranges failed: \(error)")) }
                    try? await context.sleep(for: .milliseconds(500))
                }
            }
            let readBack = Dictionary((read[stream] ?? []).map { ($0.offset, $0.record.value) },
                                      uniquingKeysWith: { first, _ in first })
            let streamStart = starts[stream] ?? 0
            for range in ranges where range.sealed && range.endOffset > max(range.startOffset, streamStart) {
                let first = max(range.startOffset, streamStart)
                outcome.rangesChecked += 1
                for server in range.servers {
                    guard !server.shardAddresses.isEmpty else { continue }
                    let shard = RangeRouting.shard(streamID: stream, rangeIndex: range.index,
                                                   shardCount: server.shardAddresses.count)
                    let address = server.shardAddresses[shard]
                    let host = address.lastIndex(of: ":").map { String(address[..<$0]) } ?? address
                    if skip(host) {
                        outcome.replicasSkipped += 1
                        continue
                    }
                    let rpc = connection(address)
                    var held: [UInt64: [UInt8]] = [:]
                    var lastProblem = ""
                    attempts: for _ in 0..<40 {
                        held = [:]
                        var next = first
                        while next < range.endOffset {
                            var request = Elasticstream_V1_FetchRequest()
                            request.streamID = stream
                            request.rangeIndex = range.index
                            request.startOffset = next
                            request.endOffset = range.endOffset
                            request.maxBytes = 256 << 10
                            switch await rpc.call(.fetch, header: request, timeout: .seconds(2)) {
                            case .success(let frame):
                                let records: [(offset: UInt64, value: [UInt8])]
                                do {
                                    records = try decode(frame, below: range.endOffset)
                                } catch {
                                    lastProblem = "a fetched batch fails its checks: \(error)"
                                    break
                                }
                                guard let last = records.last, last.offset >= next else {
                                    lastProblem = "holds nothing from \(next)"
                                    break
                                }
                                for record in records where record.offset >= next { held[record.offset] = record.value }
                                next = last.offset + 1
                                continue
                            case .failure(let error):
                                lastProblem = "\(error)"
                            }
                            break
                        }
                        if next >= range.endOffset { break attempts }
                        // Tell it the seal (it may have missed it while down): that starts its repair.
                        var seal = Elasticstream_V1_SealRangeRequest()
                        seal.range = range
                        seal.epoch = range.epoch
                        _ = await rpc.call(.sealRange, header: seal, timeout: .seconds(2))
                        try? await context.sleep(for: .milliseconds(500))
                    }
                    outcome.replicasChecked += 1
                    let expected = Int(range.endOffset - first)
                    if held.count != expected {
                        // What the replica says of itself, for the report.
                        var describe = Elasticstream_V1_DescribeRangeRequest()
                        describe.streamID = stream
                        describe.rangeIndex = range.index
                        var state = "describe failed"
                        if case .success(let frame) = await rpc.call(.describeRange, header: describe, timeout: .seconds(2)),
                           let answer = try? frame.header(as: Elasticstream_V1_DescribeRangeResponse.self) {
                            state = "it says start \(answer.range.startOffset), sealed \(answer.range.sealed) at \(answer.range.endOffset), confirmed \(answer.confirmedOffset)"
                        }
                        outcome.problems.append((host, "stream \(stream) range \(range.index) [\(range.startOffset), \(range.endOffset)): server \(server.serverID) holds \(held.count) of \(expected) records (\(lastProblem); \(state))"))
                        continue
                    }
                    for offset in first..<range.endOffset where held[offset] != readBack[offset] {
                        outcome.problems.append((host, "stream \(stream) range \(range.index): server \(server.serverID) holds another record at \(offset) than the stream read gave"))
                        break
                    }
                }
            }
        }
        for rpc in connections.values { await rpc.close() }
        return outcome
    }

    /// The records of a FETCH answer below `end`, every batch checked.
    struct Truncated: Error {}

    static func decode(_ frame: Frame, below end: UInt64) throws -> [(offset: UInt64, value: [UInt8])] {
        let payload = Array(frame.payload)
        var records: [(offset: UInt64, value: [UInt8])] = []
        try payload.withUnsafeBytes { raw in
            var position = 0
            while position < raw.count {
                let rest = UnsafeRawBufferPointer(rebasing: raw[position...])
                let length = try RecordBatchView.batchLength(of: rest)
                guard length <= rest.count else { throw Truncated() }
                let view = try RecordBatchView(validating: UnsafeRawBufferPointer(rebasing: rest[..<length]))
                let batch = RecordBatch(view)
                for (i, record) in batch.records.enumerated() where batch.baseOffset + UInt64(i) < end {
                    records.append((batch.baseOffset + UInt64(i), record.value))
                }
                position += length
            }
        }
        return records
    }
}
