import CSupport
import Foundation
import Platform
import Raft
import Reactor

/// A Raft member's durable state (hard state, snapshot, log entries) in one append-only file on its shard, written
/// through the reactor and made durable with fdatasync before `persist` returns: a vote or an acknowledgement never
/// goes out before what it promises is on disk. Everything one `Ready` needs goes out in one write and one
/// fdatasync, so many proposals share one sync.
///
/// Records: u32 payload length, u64 XXH3-64 of the payload seeded with the record's file offset, u8 kind, payload.
/// Kinds: 1 entries (u32 count; per entry u64 term, u64 index, u8 kind, u32 length, data), 2 hard state (u64 term,
/// u64 vote, u64 commit, and since the write marks u64 the file offset where its write began), 3 snapshot (u64 index,
/// u64 term, u32 voter count, u64 voters, u32 length, data). Every write ends with a hard state record carrying the
/// offset it began at: its *write mark*.
/// Recovery replays records in order up to the first that fails its checks. If that record lies in the file's image
/// (its first write, put in place by a rename, never torn), or a write mark further on names a write that began
/// after it, the record had been synced (a later write only starts once the one before is durable) and was damaged
/// since: corruption, reported, and the member does not start. Otherwise it is a torn last write, and the file is cut
/// there. When the file outgrows `compactionBytes` past a snapshot, it is rewritten as one
/// image (snapshot, entries after it, hard state) into a new file that replaces it atomically.
/// Shard-bound.
public final class RaftStorage {
    public let directory: String
    let context: ShardContext
    public let compactionBytes: Int
    private var file: File
    private var tail: UInt64
    public private(set) var state: PersistedState
    public private(set) var syncs = 0

    private static let headerSize = 13

    private init(directory: String, context: ShardContext, compactionBytes: Int, file: File, tail: UInt64,
                 state: PersistedState) {
        self.directory = directory
        self.context = context
        self.compactionBytes = compactionBytes
        self.file = file
        self.tail = tail
        self.state = state
    }

    private static func path(_ directory: String) -> String { "\(directory)/raft.log" }

    /// Opens (or creates) the storage in `directory`. A new one starts from `initial` (a bootstrap or joining state).
    /// Throws `IOError`, or `RaftStorageCorruption` when synced records were damaged.
    public static func open(directory: String, on context: ShardContext, initial: PersistedState,
                            compactionBytes: Int = 64 << 20) async throws -> RaftStorage {
        try await context.createDirectory(directory)
        let path = path(directory)
        if await !context.fileExists(path) {
            // The first image replaces nothing, durably: the log file only ever appears complete.
            var made: RaftStorage?
            _ = try await context.replaceDurably(path) { fresh throws(IOError) in
                let storage = RaftStorage(directory: directory, context: context, compactionBytes: compactionBytes,
                                          file: fresh, tail: 0, state: initial)
                try await storage.writeImage(into: fresh)
                made = storage
            }
            return made!
        }
        let file = try await context.open(path, options: FileOpenOptions(create: false, direct: false))
        let size = await context.fileSize(path) ?? 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 8)
        defer { buffer.deallocate() }
        var done = 0
        while done < size {
            let n = try await file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<size]),
                                        at: UInt64(done))
            if n == 0 { break }
            done += n
        }
        var state = initial
        state.entries = []
        let bytes = UnsafeRawBufferPointer(rebasing: buffer[..<done])
        let (valid, imageEnded) = replay(bytes, into: &state)
        if valid < done {
            // The file's first write is its image, put in place whole by a rename: it is never torn.
            if !imageEnded {
                throw RaftStorageCorruption(file: path, position: UInt64(valid),
                                            detail: "a record of the file's image fails its checks")
            }
            if let later = laterWrite(in: bytes, after: valid) {
                throw RaftStorageCorruption(file: path, position: UInt64(valid),
                                            detail: "a record fails its checks, and a write that began at byte \(later) follows it")
            }
        }
        if valid < done {
            // A torn last write: cut it off, so nothing after it can ever be read as a record again.
            try await file.truncate(to: UInt64(valid))
            try await file.fullSync()
        }
        return RaftStorage(directory: directory, context: context, compactionBytes: compactionBytes, file: file,
                           tail: UInt64(valid), state: state)
    }

    /// Replays records into `state`; returns where the valid ones end, and whether they reach past the end of the
    /// file's image (its first write: the write mark that began at 0; in a file from before the write marks, any
    /// hard state record, as the image held one).
    static func replay(_ bytes: UnsafeRawBufferPointer, into state: inout PersistedState) -> (Int, imageEnded: Bool) {
        var offset = 0
        var imageEnded = false
        while offset + headerSize <= bytes.count {
            let length = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
            guard length <= bytes.count - offset - headerSize else { break }
            let stored = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt64.self))
            let payload = UnsafeRawBufferPointer(rebasing: bytes[(offset + headerSize)..<(offset + headerSize + length)])
            let kind = bytes[offset + 12]
            guard stored == checksum(kind, payload, at: UInt64(offset)) else { break }
            var reader = Reader(bytes: payload)
            guard apply(kind, &reader, to: &state) else { break }
            if kind == 2 && (length != markedHardStateLength
                             || payload.loadUnaligned(fromByteOffset: 24, as: UInt64.self) == 0) {
                imageEnded = true
            }
            offset += headerSize + length
        }
        return (offset, imageEnded)
    }

    /// The start of a write that began after `bad`, from a valid write mark past it, if there is one.
    static func laterWrite(in bytes: UnsafeRawBufferPointer, after bad: Int) -> UInt64? {
        let size = headerSize + markedHardStateLength
        var offset = bad + 1
        while offset + size <= bytes.count {
            defer { offset += 1 }
            guard bytes[offset + 12] == 2,
                  UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
                      == UInt32(markedHardStateLength)
            else { continue }
            let payload = UnsafeRawBufferPointer(rebasing: bytes[(offset + headerSize)..<(offset + size)])
            let stored = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt64.self))
            guard stored == checksum(2, payload, at: UInt64(offset)) else { continue }
            let began = UInt64(littleEndian: payload.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
            // A write that began after the bad record; or the image's own mark (it began at 0, and the image, put in
            // place by a rename, is never torn).
            if began > UInt64(bad) || began == 0 { return began }
        }
        return nil
    }

    /// A hard state record with its write mark: term, vote, commit, and where its write began.
    static let markedHardStateLength = 32

    private static func checksum(_ kind: UInt8, _ payload: UnsafeRawBufferPointer, at offset: UInt64) -> UInt64 {
        var seeded = cs_xxh3_64(payload.baseAddress, payload.count, offset)
        seeded ^= UInt64(kind) &* 0x9E37_79B9_7F4A_7C15
        return seeded
    }

    private static func apply(_ kind: UInt8, _ reader: inout Reader, to state: inout PersistedState) -> Bool {
        switch kind {
        case 1:
            guard let count = reader.u32() else { return false }
            var entries: [Entry] = []
            for _ in 0..<count {
                guard let term = reader.u64(), let index = reader.u64(), let raw = reader.u8(),
                      let kind = EntryKind(rawValue: raw), let data = reader.bytes()
                else { return false }
                entries.append(Entry(term: term, index: index, kind: kind, data: data))
            }
            guard let first = entries.first else { return true }
            state.entries.removeAll { $0.index >= first.index }
            let expected = (state.entries.last?.index ?? state.snapshot.index) + 1
            guard first.index == expected || (state.entries.isEmpty && first.index > state.snapshot.index) else {
                return false
            }
            state.entries += entries
        case 2:
            guard let term = reader.u64(), let vote = reader.u64(), let commit = reader.u64() else { return false }
            state.hardState = HardState(term: term, vote: vote, commit: commit)
        case 3:
            guard let index = reader.u64(), let term = reader.u64(), let count = reader.u32() else { return false }
            var voters: Set<NodeID> = []
            for _ in 0..<count {
                guard let voter = reader.u64() else { return false }
                voters.insert(voter)
            }
            guard let data = reader.bytes() else { return false }
            state.snapshot = Snapshot(index: index, term: term, voters: voters, data: data)
            state.entries.removeAll { $0.index <= index }
            if let first = state.entries.first, first.index != index + 1 { state.entries = [] }
        default:
            return false
        }
        return true
    }

    // MARK: - Writing

    /// Makes what `ready` asks durable: hard state, snapshot, entries (replacing any from the first one's index).
    public func persist(_ ready: Ready) async throws(IOError) {
        var out = Writer()
        if let snapshot = ready.snapshot { encodeSnapshot(snapshot, into: &out) }
        if !ready.entries.isEmpty { encodeEntries(ready.entries, into: &out) }
        guard !out.records.isEmpty || ready.hardState != nil else { return }
        // A new term, a vote, entries or a snapshot must be on disk before anything goes out. So must a commit index
        // that covers a membership change about to be applied: after a restart the member rebuilds its voters by
        // applying the log up to its stored commit, and must not come back a change behind. Any other commit-only
        // Ready writes nothing (a write there would sit between a commit and its apply): the commit index on disk
        // may lag, and is learned again after a restart.
        let mustSync = ready.snapshot != nil || !ready.entries.isEmpty
            || ready.hardState.map { $0.term != state.hardState.term || $0.vote != state.hardState.vote } ?? false
            || ready.committed.contains { $0.kind == .configuration }
        guard mustSync else { return }
        if let snapshot = ready.snapshot { Self.applySnapshot(snapshot, to: &state) }
        if let first = ready.entries.first {
            state.entries.removeAll { $0.index >= first.index }
            state.entries += ready.entries
        }
        if let hard = ready.hardState { state.hardState = hard }
        try await append(out, sync: mustSync)
    }

    /// Records a snapshot the state machine took (the log before it can go).
    public func saveSnapshot(_ snapshot: Snapshot) async throws(IOError) {
        var out = Writer()
        encodeSnapshot(snapshot, into: &out)
        Self.applySnapshot(snapshot, to: &state)
        try await append(out)
        if tail > UInt64(compactionBytes) { try await rewrite() }
    }

    private static func applySnapshot(_ snapshot: Snapshot, to state: inout PersistedState) {
        state.snapshot = snapshot
        state.entries.removeAll { $0.index <= snapshot.index }
        if let first = state.entries.first, first.index != snapshot.index + 1 { state.entries = [] }
    }

    /// Writes `out` at the tail, ending with the hard state (as `state` holds it now) and the write mark.
    private func append(_ out: Writer, sync: Bool = true) async throws(IOError) {
        var out = out
        encodeHardState(state.hardState, began: tail, into: &out)
        let bytes = out.finish(startingAt: tail)
        try await Self.writeAll(bytes, to: file, at: tail, sync: sync)
        tail += UInt64(bytes.count)
        if sync { syncs += 1 }
    }

    private func writeImage(into target: File) async throws(IOError) {
        var out = Writer()
        encodeSnapshot(state.snapshot, into: &out)
        if !state.entries.isEmpty { encodeEntries(state.entries, into: &out) }
        encodeHardState(state.hardState, began: 0, into: &out)
        let bytes = out.finish(startingAt: 0)
        try await Self.writeAll(bytes, to: target, at: 0)
        tail = UInt64(bytes.count)
    }

    /// Writes `bytes` at `offset` and fdatasyncs.
    private static func writeAll(_ bytes: [UInt8], to file: File, at offset: UInt64, sync: Bool = true)
        async throws(IOError)
    {
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 8)
        defer { raw.deallocate() }
        raw.copyBytes(from: bytes)
        var done = 0
        while done < bytes.count {
            done += try await file.write(UnsafeRawBufferPointer(rebasing: raw[done..<bytes.count]),
                                         at: offset + UInt64(done))
        }
        if sync { try await file.sync() }
    }

    /// Replaces the file with one image of the current state (written aside, synced, renamed over it).
    private func rewrite() async throws(IOError) {
        let path = Self.path(directory)
        let oldTail = tail
        let fresh: File
        do {
            fresh = try await context.replaceDurably(path) { file throws(IOError) in try await writeImage(into: file) }
        } catch {
            tail = oldTail
            throw error
        }
        try? await file.close()
        file = fresh
    }

    public func close() async {
        try? await file.close()
    }

    public var fileBytes: UInt64 { tail }

    // MARK: - Encoding

    private func encodeEntries(_ entries: [Entry], into out: inout Writer) {
        out.begin(kind: 1)
        out.u32(UInt32(entries.count))
        for entry in entries {
            out.u64(entry.term)
            out.u64(entry.index)
            out.u8(entry.kind.rawValue)
            out.bytes(entry.data)
        }
        out.end()
    }

    /// A hard state record with the write mark: where the write it ends began.
    private func encodeHardState(_ hard: HardState, began: UInt64, into out: inout Writer) {
        out.begin(kind: 2)
        out.u64(hard.term)
        out.u64(hard.vote)
        out.u64(hard.commit)
        out.u64(began)
        out.end()
    }

    private func encodeSnapshot(_ snapshot: Snapshot, into out: inout Writer) {
        out.begin(kind: 3)
        out.u64(snapshot.index)
        out.u64(snapshot.term)
        out.u32(UInt32(snapshot.voters.count))
        for voter in snapshot.voters.sorted() { out.u64(voter) }
        out.bytes(snapshot.data)
        out.end()
    }

    /// Builds records; checksums are filled in once the file offset is known.
    struct Writer {
        var buffer: [UInt8] = []
        var records: [(start: Int, kind: UInt8)] = []
        private var current = 0

        mutating func begin(kind: UInt8) {
            current = buffer.count
            records.append((current, kind))
            buffer += [UInt8](repeating: 0, count: RaftStorage.headerSize)
            buffer[current + 12] = kind
        }

        mutating func end() {
            let length = UInt32(buffer.count - current - RaftStorage.headerSize)
            withUnsafeBytes(of: length.littleEndian) { raw in
                for i in 0..<4 { buffer[current + i] = raw[i] }
            }
        }

        mutating func u8(_ value: UInt8) { buffer.append(value) }
        mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { buffer += $0 } }
        mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { buffer += $0 } }
        mutating func bytes(_ value: [UInt8]) {
            u32(UInt32(value.count))
            buffer += value
        }

        func finish(startingAt offset: UInt64) -> [UInt8] {
            var out = buffer
            out.withUnsafeMutableBytes { raw in
                for record in records {
                    let length = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: record.start, as: UInt32.self)))
                    let payload = UnsafeRawBufferPointer(
                        rebasing: raw[(record.start + RaftStorage.headerSize)..<(record.start + RaftStorage.headerSize + length)])
                    let sum = RaftStorage.checksum(record.kind, payload, at: offset + UInt64(record.start))
                    raw.storeBytes(of: sum.littleEndian, toByteOffset: record.start + 4, as: UInt64.self)
                }
            }
            return out
        }
    }

    struct Reader {
        let source: UnsafeRawBufferPointer
        var offset = 0

        init(bytes: UnsafeRawBufferPointer) { source = bytes }

        mutating func u8() -> UInt8? {
            guard offset + 1 <= source.count else { return nil }
            defer { offset += 1 }
            return source[offset]
        }

        mutating func u32() -> UInt32? {
            guard offset + 4 <= source.count else { return nil }
            defer { offset += 4 }
            return UInt32(littleEndian: source.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
        }

        mutating func u64() -> UInt64? {
            guard offset + 8 <= source.count else { return nil }
            defer { offset += 8 }
            return UInt64(littleEndian: source.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
        }

        mutating func bytes() -> [UInt8]? {
            guard let length = u32(), offset + Int(length) <= source.count else { return nil }
            defer { offset += Int(length) }
            return Array(source[offset..<(offset + Int(length))])
        }
    }
}

@available(*, unavailable)
extension RaftStorage: Sendable {}

/// A Raft log whose synced records were damaged: the member must not start on what is left (it could vote or lead
/// without entries it acknowledged). Replace the member (or restore its directory).
public struct RaftStorageCorruption: Error, CustomStringConvertible {
    public let file: String
    public let position: UInt64
    public let detail: String
    public var description: String { "Raft log corruption in \(file) at byte \(position): \(detail)" }
}
