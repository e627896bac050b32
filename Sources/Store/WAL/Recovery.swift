import Foundation
import Platform
import Reactor

/// Scans a WAL's segments in order, replaying valid entries, and decides where the log ends.
///
/// An entry that fails its checks ends the scan of its segment. It is a torn last write, to be discarded, when every
/// valid entry after it (in that segment, and at the start of the next) belongs to the same flush: its
/// `previous_flush_end` is not past the bad entry. A valid entry of a later flush after it means the bad entry had been
/// made durable and was damaged since: corruption, reported, never skipped.
struct Recovery {
    let configuration: WALConfiguration
    let context: ShardContext
    var openFiles: [Int: File] = [:]

    struct Result {
        /// Where the next flush writes (block-aligned).
        var nextPosition: UInt64
        /// What the next flush records as the end of the previous one.
        var previousFlushEnd: UInt64
    }

    private var segmentSize: UInt64 { UInt64(configuration.segmentSizeBytes) }
    private var maxPayload: Int { configuration.maxEntryPayloadBytes }

    init(configuration: WALConfiguration, context: ShardContext) {
        self.configuration = configuration
        self.context = context
    }

    private func path(_ index: Int) -> String {
        "\(configuration.directory)/segment-\(String(format: "%08d", index)).wal"
    }

    /// Segment indices present on disk, ascending.
    private func segmentIndices() async -> [Int] {
        let names = (try? await context.listDirectory(configuration.directory)) ?? []
        return names.compactMap { name -> Int? in
            guard name.hasPrefix("segment-"), name.hasSuffix(".wal") else { return nil }
            return Int(name.dropFirst("segment-".count).dropLast(".wal".count))
        }.sorted()
    }

    private mutating func file(_ index: Int) async throws(StoreError) -> File {
        if let file = openFiles[index] { return file }
        do {
            let file = try await context.open(path(index), options: FileOpenOptions())
            openFiles[index] = file
            return file
        } catch {
            throw .io(error)
        }
    }

    /// A window of a segment read into memory: bytes [start, start + count) of segment `segment`.
    private struct Window {
        var buffer: UnsafeMutableRawBufferPointer
        var segment = -1
        var start = 0
        var count = 0
        var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: buffer[..<count]) }
    }

    /// Makes `window` cover at least [offset, offset + maxFlushBytes) of segment `segment` (or up to its end).
    private mutating func cover(_ window: inout Window, _ offset: Int, of segment: Int) async throws(StoreError) {
        let wanted = min(configuration.segmentSizeBytes, offset + configuration.maxFlushBytes)
        if window.segment == segment && offset >= window.start && wanted <= window.start + window.count { return }
        let file = try await self.file(segment)
        let start = offset / WALEntryLayout.blockSize * WALEntryLayout.blockSize
        let length = min(window.buffer.count, configuration.segmentSizeBytes - start)
        do {
            let n = try await file.read(into: UnsafeMutableRawBufferPointer(rebasing: window.buffer[..<length]),
                                        at: UInt64(start))
            window.segment = segment
            window.start = start
            window.count = n
        } catch {
            throw .io(error)
        }
    }

    /// Segment indices on disk, ascending (found once per recovery).
    private(set) var indices: [Int] = []
    /// Bytes of log scanned (from the checkpoint to the tail).
    private(set) var scannedBytes: UInt64 = 0

    /// Scans from WAL position `start` (a checkpoint's position: a flush boundary with everything before it
    /// reflected in the checkpoint) to the end of the log.
    mutating func run(from start: UInt64, _ replay: (RecoveredEntry) throws(StoreError) -> Void)
        async throws(StoreError) -> Result
    {
        indices = await segmentIndices()
        let first = Int(start / segmentSize)
        guard indices.contains(first) else {
            // Nothing was written past the checkpoint (the segment it points into was never created).
            if let later = indices.first(where: { $0 > first }) {
                throw .corruption(file: path(later), position: 0,
                                  detail: "segment \(first), where the checkpoint's position \(start) lies, is missing")
            }
            return Result(nextPosition: start, previousFlushEnd: start)
        }
        var window = Window(buffer: .allocate(byteCount: 2 * configuration.maxFlushBytes,
                                              alignment: WALEntryLayout.blockSize))
        defer { window.buffer.deallocate() }

        var index = first
        var offset = Int(start % segmentSize)
        var lastPreviousFlushEnd = start
        var tail = start
        defer { scannedBytes = tail - start }
        while true {
            let base = UInt64(index) * segmentSize
            var ended = false
            while offset < configuration.segmentSizeBytes {
                try await cover(&window, offset, of: index)
                let local = offset - window.start
                guard let header = WALEntryLayout.validate(window.bytes, at: local, base: base + UInt64(window.start),
                                                           maxPayload: maxPayload)
                else {
                    try await checkNothingLaterIn(index: index, after: offset, window: &window)
                    ended = true
                    break
                }
                if header.kind != .padding {
                    let start = local + WALEntryLayout.headerSize
                    try replay(RecoveredEntry(
                        kind: header.kind, position: base + UInt64(offset),
                        payload: UnsafeRawBufferPointer(rebasing: window.bytes[start..<(start + header.length)])))
                }
                lastPreviousFlushEnd = header.previousFlushEnd
                offset += WALEntryLayout.headerSize + header.length
            }
            tail = base + UInt64(offset)
            // Does the log go on in the next segment? Only if that segment opens with a flush that follows this
            // one; if it follows data past `tail`, this segment lost durable data.
            guard indices.contains(index + 1) else { break }
            try await cover(&window, 0, of: index + 1)
            let nextBase = UInt64(index + 1) * segmentSize
            guard let header = WALEntryLayout.validate(window.bytes, at: 0, base: nextBase, maxPayload: maxPayload)
            else { break }
            if header.previousFlushEnd > tail {
                throw .corruption(file: path(index), position: UInt64(offset),
                                  detail: "segment \(index + 1) continues after position \(header.previousFlushEnd)")
            }
            if header.previousFlushEnd < tail || !ended && offset < configuration.segmentSizeBytes { break }
            index += 1
            offset = 0
        }
        // The log ends in segment `index`. The next one may exist already (prepared ahead) and so may the one after
        // (prepared when a flush that never became durable opened the next); any later one held log that the scan
        // could not reach: a segment in between is missing or damaged.
        if let beyond = indices.first(where: { $0 > index + 2 }) {
            throw .corruption(file: path(beyond), position: 0,
                              detail: "the log ends in segment \(index) but segment \(beyond) exists")
        }
        return try await finish(at: tail, segment: index, lastPreviousFlushEnd: lastPreviousFlushEnd,
                                window: &window)
    }

    /// After a bad entry at `offset`: any valid entry further on in the segment that belongs to a later flush proves
    /// corruption. Flushes are contiguous within a segment, so if any later flush exists, the one right after the
    /// bad entry's flush does, and it starts within one flush's length of the bad entry: no need to look further.
    private mutating func checkNothingLaterIn(index: Int, after offset: Int, window: inout Window)
        async throws(StoreError)
    {
        let base = UInt64(index) * segmentSize
        let block = WALEntryLayout.blockSize
        var candidate = (offset / block + 1) * block
        let last = min(configuration.segmentSizeBytes, offset + configuration.maxFlushBytes + block)
        while candidate < last {
            try await cover(&window, candidate, of: index)
            if let header = WALEntryLayout.validate(window.bytes, at: candidate - window.start,
                                                    base: base + UInt64(window.start), maxPayload: maxPayload),
               header.previousFlushEnd > base + UInt64(offset)
            {
                throw .corruption(file: path(index), position: UInt64(offset),
                                  detail: "invalid entry followed by a later flush at byte \(candidate)")
            }
            candidate += block
        }
    }

    /// Makes the tail writable: when the last flush was torn part-way through a block, the valid prefix of that
    /// block stays and the rest is overwritten with padding, so the next flush starts on a block boundary right after
    /// it and a later recovery reads straight through.
    private mutating func finish(at tail: UInt64, segment index: Int, lastPreviousFlushEnd: UInt64,
                                 window: inout Window) async throws(StoreError) -> Result {
        let block = WALEntryLayout.blockSize
        let inSegment = Int(tail % segmentSize)
        if inSegment % block == 0 { return Result(nextPosition: tail, previousFlushEnd: tail) }
        let end = WALEntryLayout.paddedEnd(inSegment)
        guard end <= configuration.segmentSizeBytes else {
            // No room to pad in this segment: the next flush opens the next segment, recording where this one ended.
            return Result(nextPosition: (tail / segmentSize + 1) * segmentSize, previousFlushEnd: tail)
        }
        let file = try await self.file(index)
        try await cover(&window, inSegment, of: index)
        let start = inSegment / block * block
        let local = start - window.start
        let region = UnsafeMutableRawBufferPointer(rebasing: window.buffer[local..<(local + end - start)])
        let base = UInt64(index) * segmentSize + UInt64(start)
        WALEntryLayout.writePadding(into: region, from: inSegment - start, to: end - start, base: base,
                                    previousFlushEnd: lastPreviousFlushEnd)
        do {
            _ = try await file.write(UnsafeRawBufferPointer(region), at: UInt64(start), durable: false)
            try await file.sync()
        } catch {
            throw .io(error)
        }
        let next = UInt64(index) * segmentSize + UInt64(end)
        return Result(nextPosition: next, previousFlushEnd: next)
    }
}
