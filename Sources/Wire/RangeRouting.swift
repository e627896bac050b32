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
