/// The binary form of a `Message` between members (the payload of a RAFT_MESSAGE frame, docs/protocol.md).
/// Little-endian: u8 kind, u64 from, to, term, index, log term, commit, reject hint, context, u8 flags (bit 0 reject,
/// bit 1 transfer, bit 2 snapshot present), u32 entry count, entries (u64 term, u64 index, u8 kind, u32 length,
/// data), then the snapshot if present (u64 index, u64 term, u32 voter count, u64 voters, u32 length, data).
extension Message {
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(90 + entries.reduce(0) { $0 + 21 + $1.data.count } + (snapshot?.data.count ?? 0))
        func u8(_ v: UInt8) { out.append(v) }
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        u8(kind.rawValue)
        for v in [from, to, term, index, logTerm, commit, rejectHint, context] { u64(v) }
        u8((reject ? 1 : 0) | (transfer ? 2 : 0) | (snapshot != nil ? 4 : 0))
        u32(UInt32(entries.count))
        for entry in entries {
            u64(entry.term)
            u64(entry.index)
            u8(entry.kind.rawValue)
            u32(UInt32(entry.data.count))
            out += entry.data
        }
        if let snapshot {
            u64(snapshot.index)
            u64(snapshot.term)
            u32(UInt32(snapshot.voters.count))
            for voter in snapshot.voters.sorted() { u64(voter) }
            u32(UInt32(snapshot.data.count))
            out += snapshot.data
        }
        return out
    }

    /// Decodes a message; nil when the bytes are not one (truncated, unknown kind, trailing bytes).
    public init?(decoding bytes: UnsafeRawBufferPointer) {
        var offset = 0
        func u8() -> UInt8? {
            guard offset + 1 <= bytes.count else { return nil }
            defer { offset += 1 }
            return bytes[offset]
        }
        func u32() -> UInt32? {
            guard offset + 4 <= bytes.count else { return nil }
            defer { offset += 4 }
            return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
        }
        func u64() -> UInt64? {
            guard offset + 8 <= bytes.count else { return nil }
            defer { offset += 8 }
            return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
        }
        func data() -> [UInt8]? {
            guard let length = u32(), Int(length) <= bytes.count - offset else { return nil }
            defer { offset += Int(length) }
            return Array(bytes[offset..<(offset + Int(length))])
        }
        guard let raw = u8(), let kind = MessageKind(rawValue: raw) else { return nil }
        var fields: [UInt64] = []
        for _ in 0..<8 {
            guard let v = u64() else { return nil }
            fields.append(v)
        }
        guard let flags = u8(), let count = u32(), Int(count) <= bytes.count else { return nil }
        self.init(kind: kind, from: fields[0], to: fields[1], term: fields[2])
        index = fields[3]
        logTerm = fields[4]
        commit = fields[5]
        rejectHint = fields[6]
        context = fields[7]
        reject = flags & 1 != 0
        transfer = flags & 2 != 0
        for _ in 0..<count {
            guard let term = u64(), let index = u64(), let rawKind = u8(), let entryKind = EntryKind(rawValue: rawKind),
                  let payload = data()
            else { return nil }
            entries.append(Entry(term: term, index: index, kind: entryKind, data: payload))
        }
        if flags & 4 != 0 {
            guard let index = u64(), let term = u64(), let voterCount = u32(), Int(voterCount) <= bytes.count else {
                return nil
            }
            var voters: Set<NodeID> = []
            for _ in 0..<voterCount {
                guard let voter = u64() else { return nil }
                voters.insert(voter)
            }
            guard let payload = data() else { return nil }
            snapshot = Snapshot(index: index, term: term, voters: voters, data: payload)
        }
        guard offset == bytes.count else { return nil }
    }
}
