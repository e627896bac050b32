/// Recently appended batches, kept in memory so that reads of a range's tail never touch the disk. Bounded by
/// bytes; the oldest batches go first. Shard-bound.
final class BatchCache {
    private struct Key: Hashable {
        let range: RangeKey
        let baseOffset: UInt64
    }

    let capacityBytes: Int
    private(set) var usedBytes = 0
    private var entries: [Key: [UInt8]] = [:]
    private var order: [Key] = []
    private var orderHead = 0

    init(capacityBytes: Int) {
        self.capacityBytes = capacityBytes
    }

    func insert(_ bytes: [UInt8], range: RangeKey, baseOffset: UInt64) {
        guard bytes.count <= capacityBytes else { return }
        let key = Key(range: range, baseOffset: baseOffset)
        if entries[key] != nil { return }
        while usedBytes + bytes.count > capacityBytes, orderHead < order.count {
            let oldest = order[orderHead]
            orderHead += 1
            if let evicted = entries.removeValue(forKey: oldest) { usedBytes -= evicted.count }
        }
        if orderHead > 1024 && orderHead * 2 > order.count {
            order.removeFirst(orderHead)
            orderHead = 0
        }
        entries[key] = bytes
        order.append(key)
        usedBytes += bytes.count
        assert(usedBytes <= capacityBytes)
    }

    func lookup(range: RangeKey, baseOffset: UInt64) -> [UInt8]? {
        entries[Key(range: range, baseOffset: baseOffset)]
    }

    /// Drops every batch of `range` below `offset` (a trim), or all of them.
    func remove(range: RangeKey, below offset: UInt64 = .max) {
        for key in entries.keys where key.range == range && key.baseOffset < offset {
            usedBytes -= entries.removeValue(forKey: key)!.count
        }
    }
}
