/// A member's log in memory: a snapshot standing for everything up to `snapshot.index`, then the entries after it.
/// Tracks what is committed, what the driver has persisted (`stable`) and what it has applied.
struct RaftLog {
    private(set) var snapshot: Snapshot
    private(set) var entries: [Entry]
    private(set) var committed: UInt64
    /// The state machine has applied everything up to here (handed out in a Ready and advanced).
    var applied: UInt64
    /// Entries up to here are on the driver's disk.
    private(set) var stable: UInt64
    /// Set when a snapshot was installed and not persisted yet.
    private(set) var unstableSnapshot: Snapshot?

    init(_ persisted: PersistedState) {
        snapshot = persisted.snapshot
        entries = persisted.entries
        committed = max(persisted.hardState.commit, persisted.snapshot.index)
        applied = persisted.snapshot.index
        stable = persisted.entries.last?.index ?? persisted.snapshot.index
    }

    var firstIndex: UInt64 { snapshot.index + 1 }
    var lastIndex: UInt64 { entries.last?.index ?? snapshot.index }
    var lastTerm: UInt64 { entries.last?.term ?? snapshot.term }

    /// The term of the entry at `index`, nil when it is compacted away or not there.
    func term(_ index: UInt64) -> UInt64? {
        if index == snapshot.index { return snapshot.term }
        guard index > snapshot.index, index <= lastIndex else { return nil }
        return entries[Int(index - snapshot.index - 1)].term
    }

    func entry(_ index: UInt64) -> Entry? {
        guard index > snapshot.index, index <= lastIndex else { return nil }
        return entries[Int(index - snapshot.index - 1)]
    }

    func matchTerm(_ index: UInt64, _ term: UInt64) -> Bool { self.term(index) == term }

    /// Whether a candidate whose log ends at (`index`, `term`) is at least as up to date as this one.
    func isUpToDate(index: UInt64, term: UInt64) -> Bool {
        term > lastTerm || (term == lastTerm && index >= lastIndex)
    }

    /// Entries from `index` on, up to `maxBytes` (at least one); nil when `index` is compacted away.
    func entries(from index: UInt64, maxBytes: Int) -> [Entry]? {
        guard index > snapshot.index else { return nil }
        guard index <= lastIndex else { return [] }
        var result: [Entry] = []
        var bytes = 0
        var i = Int(index - snapshot.index - 1)
        while i < entries.count {
            bytes += entries[i].data.count + 24
            if !result.isEmpty && bytes > maxBytes { break }
            result.append(entries[i])
            i += 1
        }
        return result
    }

    /// The largest index at or below `index` whose term is at most `term` (where a leader's probe should go next
    /// when a follower reported `term` at `index`).
    func findConflictByTerm(_ index: UInt64, _ term: UInt64) -> UInt64 {
        var i = min(index, lastIndex)
        while i > snapshot.index, let t = self.term(i), t > term { i -= 1 }
        return i
    }

    mutating func append(_ new: [Entry]) {
        guard let first = new.first else { return }
        precondition(first.index == lastIndex + 1, "appending \(first.index) after \(lastIndex)")
        entries.append(contentsOf: new)
    }

    /// Appends what the leader sent after (`index`, `term`), which matches: entries already here with the same term
    /// stay; from the first conflicting one on, this log is replaced. Returns the last index of the new entries.
    mutating func append(after index: UInt64, _ new: [Entry]) -> UInt64 {
        // Entries at or below the snapshot are committed, so they match.
        for (i, entry) in new.enumerated() where entry.index > snapshot.index {
            if let existing = term(entry.index) {
                if existing == entry.term { continue }
                precondition(entry.index > committed, "conflict at \(entry.index), committed \(committed)")
                truncate(after: entry.index - 1)
            }
            append(Array(new[i...]))
            break
        }
        return index + UInt64(new.count)
    }

    private mutating func truncate(after index: UInt64) {
        guard index < lastIndex else { return }
        entries.removeLast(Int(lastIndex - index))
        if stable > index { stable = index }
    }

    mutating func commit(to index: UInt64) {
        if index > committed {
            precondition(index <= lastIndex, "commit \(index) past the last index \(lastIndex)")
            committed = index
        }
    }

    /// Entries not yet persisted.
    var unstableEntries: [Entry] {
        guard stable < lastIndex else { return [] }
        return Array(entries[Int(stable - snapshot.index)...])
    }

    /// Committed entries the driver has persisted and not yet applied.
    func committedToApply(maxBytes: Int = .max) -> [Entry] {
        let upTo = min(committed, stable)
        guard upTo > applied, applied >= snapshot.index else { return [] }
        return entries(from: applied + 1, maxBytes: maxBytes)?.filter { $0.index <= upTo } ?? []
    }

    mutating func stabilize(through index: UInt64, term: UInt64) {
        // Only if the entry there is still the one persisted (a later truncation may have replaced it).
        if self.term(index) == term && index > stable { stable = index }
    }

    mutating func stabilizeSnapshot(_ index: UInt64) {
        if unstableSnapshot?.index == index { unstableSnapshot = nil }
    }

    /// Replaces the whole log with a snapshot from the leader.
    mutating func restore(_ new: Snapshot) {
        snapshot = new
        entries = []
        committed = new.index
        applied = new.index
        stable = new.index
        unstableSnapshot = new
    }

    /// Drops entries up to `index` (applied), keeping a snapshot of them.
    mutating func compact(through index: UInt64, voters: Set<NodeID>, data: [UInt8]) {
        guard index > snapshot.index, index <= applied, let term = term(index) else { return }
        entries.removeFirst(Int(index - snapshot.index))
        snapshot = Snapshot(index: index, term: term, voters: voters, data: data)
    }
}
