/// What a leader knows of one follower's log.
struct Progress {
    enum State {
        /// Sends one append at a time until it finds where the logs match.
        case probe
        /// Streams appends, up to `maxInflight` in flight.
        case replicate
        /// Waits for a snapshot to be installed.
        case snapshot
    }

    var match: UInt64 = 0
    var next: UInt64
    var state: State = .probe
    /// In probe: an append is out and unanswered (until a response or the next heartbeat).
    var probeSent = false
    var pendingSnapshot: UInt64 = 0
    /// Heard from since the last quorum check.
    var recentActive = false
    /// Last indices of the appends in flight, oldest first.
    var inflight: [UInt64] = []

    init(next: UInt64) {
        self.next = next
    }

    func isPaused(maxInflight: Int) -> Bool {
        switch state {
        case .probe: return probeSent
        case .replicate: return inflight.count >= maxInflight
        case .snapshot: return true
        }
    }

    /// A successful response up to `index`: true when it told something new.
    mutating func maybeUpdate(_ index: UInt64) -> Bool {
        var updated = false
        if match < index {
            match = index
            updated = true
            probeSent = false
        }
        next = max(next, index + 1)
        return updated
    }

    /// A rejection of the append after `rejected`; `hint` is where the follower's log may match. False when the
    /// rejection is stale.
    mutating func maybeDecrease(rejected: UInt64, hint: UInt64) -> Bool {
        if state == .replicate {
            // Stale: the rejected append was before what is known to match.
            if rejected <= match { return false }
            next = match + 1
            return true
        }
        // Probing: only the rejection of the last probe counts.
        if next - 1 != rejected { return false }
        next = max(min(rejected, hint + 1), match + 1)
        probeSent = false
        return true
    }

    mutating func becomeProbe() {
        if state == .snapshot {
            next = max(match + 1, pendingSnapshot + 1)
            pendingSnapshot = 0
        } else {
            next = match + 1
        }
        state = .probe
        probeSent = false
        inflight = []
    }

    mutating func becomeReplicate() {
        state = .replicate
        next = match + 1
        probeSent = false
        inflight = []
    }

    mutating func becomeSnapshot(_ index: UInt64) {
        state = .snapshot
        pendingSnapshot = index
        inflight = []
    }

    /// Acknowledged appends free their slots.
    mutating func freeInflight(through index: UInt64) {
        var n = 0
        while n < inflight.count && inflight[n] <= index { n += 1 }
        if n > 0 { inflight.removeFirst(n) }
    }
}
