import Client
import Foundation
import PlacementDriver
import Reactor
import Records
import Testing
import Transport
import Wire

@Suite(.serialized) struct ClusterTests {
    /// Appends across several ranges (each reopen of the stream starts a new one) and reads every record back in
    /// order; a tailing reader started before the first append sees every record exactly once, in order.
    @Test func appendReadAndTailAcrossRanges() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: serverPath()), "build the server first: \(serverPath())")
        let cluster = try NodeCluster()
        try cluster.startAll()
        let reactor = try Reactor(configuration: .testing(shards: 1))
        defer { reactor.shutdown() }
        let total = 600
        let (records, tailed, rangeCount) = try await withClient(reactor, cluster) { box in
            let client = box.value
            try await waitForServers(client, 3)
            let stream = try await client.createStream(replicas: 3, ackCount: 2).streamID
            // The tail runs beside the writers, on the same shard.
            let tail = client.context.spawn { () -> [UInt64] in
                var seen: [UInt64] = []
                for try await record in box.value.tail(stream: stream, from: 0) {
                    seen.append(record.offset)
                    #expect(number(record.record) == Int(record.offset), "record \(record.offset) holds \(number(record.record) ?? -1)")
                    if seen.count == total { break }
                }
                return seen
            }
            var n = 0
            for _ in 0..<3 {
                let writer = try await client.openStream(stream)
                let bound = Box(writer)
                for _ in 0..<(total / 3 / 4) {
                    // Three appends in flight at once (tasks on this shard start in order, so offsets follow it).
                    let first = n
                    let a = client.context.spawn { try await bound.value.append([record(first), record(first + 1)]) }
                    let b = client.context.spawn { try await bound.value.append([record(first + 2)]) }
                    let c = client.context.spawn { try await bound.value.append([record(first + 3)]) }
                    let offsets = [try await a.value, try await b.value, try await c.value]
                    #expect(offsets == [UInt64(n), UInt64(n + 2), UInt64(n + 3)])
                    n += 4
                }
                await writer.close()
            }
            let records = try await readAll(client, stream, to: UInt64(n))
            let tailed = try await tail.value
            let ranges = try await client.ranges(of: stream).count
            return (records, tailed, ranges)
        }
        #expect(records.count == total)
        #expect(records.map(\.offset) == (0..<UInt64(total)).map { $0 })
        #expect(records.allSatisfy { number($0.record) == Int($0.offset) })
        #expect(tailed == (0..<UInt64(total)).map { $0 }, "the tail saw \(tailed.count) records")
        #expect(rangeCount == 3)
    }
}
