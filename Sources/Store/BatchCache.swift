/// Recently appended batches, kept in memory so that reads of a range's tail never touch the disk. One arena of
/// `capacityBytes`, allocated once and written as a ring: an insert copies the batch in at the ring's tail and evicts
/// the oldest batches it overwrites, so memory never goes past the bound and the append path never allocates.
/// Shard-bound.
final class BatchCache {
    private struct Key: Hashable {
        let range: RangeKey
        let baseOffset: UInt64
    }

    private struct Slot {
        let offset: Int
        let length: Int
    }

    private struct Placed {
        let key: Key
        let offset: Int
    }

    let capacityBytes: Int
    /// Bytes of batches held (not counting space lost at the ring's end or to removed batches).
    private(set) var usedBytes = 0
    private let arena: UnsafeMutableRawBufferPointer
    private var slots: [Key: Slot] = [:]
    /// Batches in the order they were written, oldest first from `head`.
    private var order: [Placed] = []
    private var head = 0
    private var tail = 0

    init(capacityBytes: Int) {
        self.capacityBytes = capacityBytes
        arena = .allocate(byteCount: max(capacityBytes, 1), alignment: 64)
    }

    deinit {
        arena.deallocate()
    }

    func insert(_ bytes: UnsafeRawBufferPointer, range: RangeKey, baseOffset: UInt64) {
        let count = bytes.count
        guard count > 0, count <= capacityBytes else { return }
        let key = Key(range: range, baseOffset: baseOffset)
        if slots[key] != nil { return }
        var at = tail
        if at + count > capacityBytes {
            // Wrap: what lies between the tail and the end is the oldest data; it goes first.
            while let oldest = oldest(), oldest.offset >= tail { evictOldest() }
            at = 0
        }
        // The oldest batches from `at` on are the ones the copy overwrites.
        while let oldest = oldest(), oldest.offset >= at, oldest.offset < at + count { evictOldest() }
        (arena.baseAddress! + at).copyMemory(from: bytes.baseAddress!, byteCount: count)
        slots[key] = Slot(offset: at, length: count)
        order.append(Placed(key: key, offset: at))
        usedBytes += count
        tail = at + count
        if head > 1024 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
        assert(usedBytes <= capacityBytes)
    }

    private func oldest() -> Placed? { head < order.count ? order[head] : nil }

    private func evictOldest() {
        let placed = order[head]
        head += 1
        if let slot = slots[placed.key], slot.offset == placed.offset {
            slots[placed.key] = nil
            usedBytes -= slot.length
        }
    }

    /// A copy of the cached batch, if it is here.
    func lookup(range: RangeKey, baseOffset: UInt64) -> [UInt8]? {
        guard let slot = slots[Key(range: range, baseOffset: baseOffset)] else { return nil }
        return [UInt8](UnsafeRawBufferPointer(rebasing: arena[slot.offset..<(slot.offset + slot.length)]))
    }

    func contains(range: RangeKey, baseOffset: UInt64) -> Bool {
        slots[Key(range: range, baseOffset: baseOffset)] != nil
    }

    /// Drops every batch of `range` below `offset` (a trim), or all of them. Their space is reused when the ring
    /// comes round to it.
    func remove(range: RangeKey, below offset: UInt64 = .max, from lowest: UInt64 = 0) {
        for (key, slot) in slots where key.range == range && key.baseOffset < offset && key.baseOffset >= lowest {
            slots[key] = nil
            usedBytes -= slot.length
        }
    }
}
