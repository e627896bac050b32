import Platform
import Reactor

/// The deadlines of many waiting things on one shard (calls awaiting answers, readers awaiting records), expired by
/// one task: it wakes every `resolution` while any deadline is set and expires, in deadline order, those that have
/// passed. A min-heap with lazy removal: setting or removing a deadline is O(log n) or O(1), a sweep costs only what
/// it expires (a timer per deadline would cost a task and two ring requests each; a scan would cost every entry).
/// Shard-bound.
public final class Deadlines<Key: Hashable> {
    private let context: ShardContext
    private let resolution: Duration
    private let expire: (Key) -> Void
    private struct Entry {
        let deadline: Instant
        let key: Key
    }
    private var heap: [Entry] = []
    private var live: [Key: Instant] = [:]
    private var sweeping = false

    /// `expire` runs on the shard for each key whose deadline passed (after it was removed here).
    public init(on context: ShardContext, resolution: Duration = .milliseconds(10), expire: @escaping (Key) -> Void) {
        self.context = context
        self.resolution = resolution
        self.expire = expire
    }

    /// Deadlines set and not yet expired or removed.
    public var count: Int { live.count }

    public func set(_ key: Key, _ deadline: Instant) {
        live[key] = deadline
        push(Entry(deadline: deadline, key: key))
        if !sweeping { startSweeping() }
    }

    public func remove(_ key: Key) {
        guard live.removeValue(forKey: key) != nil else { return }
        // Entries of removed keys stay in the heap until they reach its top; it is rebuilt when they dominate.
        if heap.count > 64 && heap.count > 4 * live.count { rebuild() }
    }

    public func removeAll() {
        live = [:]
        heap = []
    }

    private func startSweeping() {
        sweeping = true
        let bound = ShardBound(self)
        context.spawn {
            let deadlines = bound.value
            while !deadlines.live.isEmpty {
                try? await deadlines.context.sleep(for: deadlines.resolution)
                deadlines.sweep()
            }
            deadlines.heap = []
            deadlines.sweeping = false
        }
    }

    private func sweep() {
        let now = context.now
        while let top = heap.first, top.deadline <= now {
            pop()
            guard let deadline = live[top.key], deadline == top.deadline else { continue }
            live[top.key] = nil
            expire(top.key)
        }
    }

    private func rebuild() {
        heap = live.map { Entry(deadline: $0.value, key: $0.key) }
        for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(i) }
    }

    private func push(_ entry: Entry) {
        heap.append(entry)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].deadline < heap[parent].deadline else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private func pop() {
        let last = heap.removeLast()
        guard !heap.isEmpty else { return }
        heap[0] = last
        siftDown(0)
    }

    private func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < heap.count else { return }
            var smallest = left
            if left + 1 < heap.count && heap[left + 1].deadline < heap[left].deadline { smallest = left + 1 }
            guard heap[smallest].deadline < heap[parent].deadline else { return }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}

@available(*, unavailable)
extension Deadlines: Sendable {}
