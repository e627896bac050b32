import CSupport

/// Which shard of a range server owns a range: `XXH3-64(stream id ‖ range index) mod shard count`, the id as 8 and
/// the index as 4 little-endian bytes (docs/protocol.md). Clients and servers must agree on it byte for byte.
public enum RangeRouting {
    public static func hash(streamID: UInt64, rangeIndex: UInt32) -> UInt64 {
        var key: (UInt64, UInt32) = (streamID.littleEndian, rangeIndex.littleEndian)
        return withUnsafeBytes(of: &key) { raw in cs_xxh3_64(raw.baseAddress, 12, 0) }
    }

    public static func shard(streamID: UInt64, rangeIndex: UInt32, shardCount: Int) -> Int {
        precondition(shardCount > 0)
        return Int(hash(streamID: streamID, rangeIndex: rangeIndex) % UInt64(shardCount))
    }
}

/// Where a range whose writer is gone is sealed, from the confirmed ends its fenced replicas answered: with `s`
/// answers of `r` replicas and an ack count of `a`, the `(a − r + s)`-th highest end. Every acknowledged record is
/// held by `a` replicas, at most `r − s` of which did not answer, so at least `a − (r − s)` of the answers are at
/// or past it. It needs `r − a + 1` answers (nil with fewer). Shared by a new writer and a server sealing a range
/// whose writer's lease lapsed.
public enum ReplicaQuorum {
    public static func answersNeeded(replicaCount: Int, ackCount: Int) -> Int {
        max(1, replicaCount - ackCount + 1)
    }

    public static func sealEnd(ends: [UInt64], replicaCount: Int, ackCount: Int) -> UInt64? {
        guard replicaCount >= 1, (1...replicaCount).contains(ackCount),
              ends.count >= answersNeeded(replicaCount: replicaCount, ackCount: ackCount),
              ends.count <= replicaCount
        else { return nil }
        let sorted = ends.sorted(by: >)
        let end = sorted[ackCount - replicaCount + ends.count - 1]
        // Invariant: at least a − (r − s) of the answers are at or past the end (so every acknowledged record, held
        // by a replicas, is below it), and no answer is ignored from above: the end is one of the answers.
        assert(ends.filter { $0 >= end }.count >= ackCount - (replicaCount - ends.count) && ends.contains(end))
        return end
    }
}
