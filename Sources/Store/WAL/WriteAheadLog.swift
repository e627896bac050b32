import CSupport
import Foundation
import Platform
import Reactor

/// One entry found by recovery. `payload` is valid only during the call that receives it.
public struct RecoveredEntry {
    public let kind: WALEntryKind
    public let position: UInt64
    public let payload: UnsafeRawBufferPointer
}

/// Receives every entry of a flush, in log order, the moment the flush is durable and before any of its appenders
/// resumes; recovery replays through the same call. The state it builds therefore always reflects exactly the log up
/// to `durablePosition`, which is what a checkpoint records.
public protocol WALSink: AnyObject {
    func apply(_ entry: RecoveredEntry, recovering: Bool) throws(StoreError)
}

/// A shard's write-ahead log: fixed-size preallocated segment files written with O_DIRECT in whole blocks, with
/// group commit. Every append that arrives while a flush is in progress goes into the next flush, and one write
/// plus one fdatasync (or one RWF_DSYNC write) makes them all durable at once. Shard-bound: use it only on the shard
/// whose context opened it.
public final class WriteAheadLog {
    public let configuration: WALConfiguration
    let context: ShardContext
    private var segments: [Int: File] = [:]

    /// Where the flush after the last one started writes (block-aligned).
    private var nextFlushPosition: UInt64
    /// What the next flush records as `previous_flush_end`: where the last flush started (not completed) ends.
    private var nextFillPreviousEnd: UInt64

    // The buffer appends are copied into, and the one being written.
    private var filling: UnsafeMutableRawBufferPointer
    private var writing: UnsafeMutableRawBufferPointer
    private var fillBase: UInt64?
    private var fillPreviousEnd: UInt64 = 0
    private var fillLimit = 0
    private var fillOffset = 0
    private var fillWaiters: [PlacedEntry] = []
    private var spaceWaiters: [WaitingEntry] = []
    private var flushing = false
    private var flushScheduled = false
    /// Set while `filling` still holds a durable flush's bytes that `settle` has not handed to the sink yet.
    private var settlePending = false
    private var failure: StoreError?
    private var preparing: Set<Int> = []
    private var preparationWaiters: [Int: [UnsafeContinuation<Void, Never>]] = [:]
    /// Segment files no longer needed, kept to be renamed to the next index instead of creating and zero-filling one.
    private var spare: [Int] = []
    /// Reads in progress per segment: a segment being read is not reclaimed.
    private var readers: [Int: Int] = [:]
    /// Gets every entry as it becomes durable.
    public weak var sink: WALSink?

    /// Flushes completed since open (group commit makes this much smaller than the number of appends).
    public private(set) var flushCount = 0
    /// Segments reused (renamed) rather than created since open.
    public private(set) var reusedSegments = 0
    /// Bytes recovery scanned at open: from the checkpoint to the tail.
    public private(set) var recoveredBytes: UInt64 = 0
    /// Segment indices on disk at open.
    public private(set) var segmentsAtOpen: [Int] = []
    /// The WAL position up to which everything is durable.
    public private(set) var durablePosition: UInt64

    private init(configuration: WALConfiguration, context: ShardContext, tail: UInt64) {
        self.configuration = configuration
        self.context = context
        nextFlushPosition = tail
        nextFillPreviousEnd = tail
        durablePosition = tail
        filling = .allocate(byteCount: configuration.maxFlushBytes, alignment: WALEntryLayout.blockSize)
        writing = .allocate(byteCount: configuration.maxFlushBytes, alignment: WALEntryLayout.blockSize)
    }

    deinit {
        filling.deallocate()
        writing.deallocate()
    }

    var segmentSize: UInt64 { UInt64(configuration.segmentSizeBytes) }

    func segmentPath(_ index: Int) -> String {
        "\(configuration.directory)/segment-\(String(format: "%08d", index)).wal"
    }

    // MARK: - Open and recover

    /// Opens the log in `configuration.directory`, replaying every valid entry from WAL position `start` (the last
    /// checkpoint's; 0 for a new log) in order through `sink`, and makes it ready to append after the last one. A torn
    /// last write is discarded (and its block rewritten); an invalid entry followed by a later valid flush is
    /// corruption, reported with its file and position.
    public static func open(
        _ configuration: WALConfiguration, on context: ShardContext, from start: UInt64 = 0, sink: WALSink
    ) async throws(StoreError) -> WriteAheadLog {
        try configuration.validate()
        do {
            try await context.createDirectory(configuration.directory)
        } catch {
            throw .io(error)
        }
        var recovery = Recovery(configuration: configuration, context: context)
        let result = try await recovery.run(from: start) { (entry) throws(StoreError) in
            try sink.apply(entry, recovering: true)
        }
        let log = WriteAheadLog(configuration: configuration, context: context, tail: result.nextPosition)
        log.nextFillPreviousEnd = result.previousFlushEnd
        log.durablePosition = result.nextPosition
        log.recoveredBytes = recovery.scannedBytes
        log.segmentsAtOpen = recovery.indices
        log.sink = sink
        for (index, file) in recovery.openFiles { log.segments[index] = file }
        return log
    }

    // MARK: - Append

    /// Appends one entry and returns its WAL position once it is durable. Entries take their places in the log in
    /// the order of the calls, also when some wait: while the next flush is full, or `maxWaitingAppends` appends
    /// already wait, the caller waits in line, and later callers line up behind it. After a failed write the log
    /// refuses every append (`walFailed`).
    /// With a `prefix`, the entry's payload is the prefix (u64, little-endian) followed by `payload`.
    public func append(_ kind: WALEntryKind, _ payload: UnsafeRawBufferPointer, prefix: UInt64? = nil)
        async throws(StoreError) -> UInt64
    {
        let size = payload.count + (prefix == nil ? 0 : 8)
        guard size <= configuration.maxEntryPayloadBytes else {
            throw .entryTooLarge(bytes: size, limit: configuration.maxEntryPayloadBytes)
        }
        if let failure { throw .walFailed("\(failure)") }
        // Placing the entry, registering its waiter and scheduling the flush happen in the continuation's body, with
        // no suspension between them: the await itself may hop, and a flush that ran in between would carry the
        // entry without its waiter.
        let result = await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<UInt64, StoreError>, Never>) in
            if let failure { return continuation.resume(returning: .failure(.walFailed("\(failure)"))) }
            if spaceWaiters.isEmpty && place(kind, payload, prefix, continuation) { return }
            spaceWaiters.append(WaitingEntry(kind: kind, payload: payload, prefix: prefix, continuation: continuation))
        }
        return try result.get()
    }

    /// Copies the entry into the filling buffer when it has room (and fewer than `maxWaitingAppends` wait on it).
    private func place(_ kind: WALEntryKind, _ payload: UnsafeRawBufferPointer, _ prefix: UInt64?,
                       _ continuation: UnsafeContinuation<Result<UInt64, StoreError>, Never>) -> Bool {
        if settlePending { return false }
        let size = WALEntryLayout.headerSize + payload.count + (prefix == nil ? 0 : 8)
        if fillBase == nil { startFilling(size) }
        guard WALEntryLayout.paddedEnd(fillOffset + size) <= fillLimit,
              fillWaiters.count < configuration.maxWaitingAppends
        else { return false }
        let position = fillBase! + UInt64(fillOffset)
        WALEntryLayout.write(kind: kind, payload: payload, prefix: prefix, previousFlushEnd: fillPreviousEnd,
                             into: filling, at: fillOffset, base: fillBase!)
        fillOffset += size
        fillWaiters.append(PlacedEntry(position: position, continuation: continuation))
        if !flushing && !flushScheduled {
            // Flush at the end of this loop turn, so that appends made in the same turn share the write.
            flushScheduled = true
            let log = ShardBound(self)
            context.shard.post { log.value.flush() }
        }
        return true
    }

    /// Moves appenders waiting in line into the filling buffer, in order, as far as it has room.
    private func placeWaiting() {
        if let failure {
            let waiting = spaceWaiters
            spaceWaiters = []
            for waiter in waiting { waiter.continuation.resume(returning: .failure(.walFailed("\(failure)"))) }
            return
        }
        if settlePending { return }
        var placed = 0
        while placed < spaceWaiters.count {
            let entry = spaceWaiters[placed]
            guard place(entry.kind, entry.payload, entry.prefix, entry.continuation) else { break }
            placed += 1
        }
        if placed > 0 { spaceWaiters.removeFirst(placed) }
    }

    /// Places the filling buffer at the next flush position, or at the next segment when the entry cannot fit in
    /// what remains of the current one.
    private func startFilling(_ size: Int) {
        var base = nextFlushPosition
        let inSegment = Int(base % segmentSize)
        if WALEntryLayout.paddedEnd(size) > configuration.segmentSizeBytes - inSegment {
            base = (base / segmentSize + 1) * segmentSize
        }
        fillBase = base
        fillPreviousEnd = nextFillPreviousEnd
        fillLimit = min(configuration.maxFlushBytes, configuration.segmentSizeBytes - Int(base % segmentSize))
        fillOffset = 0
    }

    /// One flush: the buffer `writing` holds, where it goes, and the appends it carries.
    private struct Flush {
        let base: UInt64
        let length: Int
        let waiters: [PlacedEntry]
        var end: UInt64 { base + UInt64(length) }
    }

    private func flush() {
        flushScheduled = false
        guard !flushing, !settlePending, failure == nil, let next = takeFill() else { return }
        flushing = true
        // Appenders waiting for room fill the other buffer while this one is written.
        placeWaiting()
        let log = ShardBound(self)
        context.spawn {
            var current = next
            while true {
                let result = await log.value.write(base: current.base, length: current.length)
                guard let following = log.value.written(result, current) else { break }
                current = following
            }
        }
    }

    /// Closes the filling buffer (padding it to a block boundary) and swaps it with the one written last; nil when it
    /// holds nothing.
    private func takeFill() -> Flush? {
        guard fillOffset > 0, let base = fillBase else { return nil }
        let end = WALEntryLayout.paddedEnd(fillOffset)
        if end > fillOffset {
            WALEntryLayout.writePadding(into: filling, from: fillOffset, to: end, base: base,
                                        previousFlushEnd: fillPreviousEnd)
        }
        let waiters = fillWaiters
        fillWaiters = []
        swap(&filling, &writing)
        fillBase = nil
        fillOffset = 0
        nextFlushPosition = base + UInt64(end)
        nextFillPreviousEnd = base + UInt64(end)
        return Flush(base: base, length: end, waiters: waiters)
    }

    private func write(base: UInt64, length: Int) async -> Result<Void, StoreError> {
        do {
            let file = try await segment(Int(base / segmentSize))
            let offset = base % segmentSize
            let data = UnsafeRawBufferPointer(rebasing: writing[..<length])
            switch configuration.durability {
            case .fdatasync:
                _ = try await file.write(data, at: offset, durable: false, urgent: true)
                try await file.sync(urgent: true)
            case .dsyncWrite:
                _ = try await file.write(data, at: offset, durable: true, urgent: true)
            }
            return .success(())
        } catch let error as StoreError {
            return .failure(error)
        } catch let error as IOError {
            return .failure(.io(error))
        } catch {
            return .failure(.walFailed("\(error)"))
        }
    }

    /// A flush's write finished. On success, the next flush (if appends are waiting in the filling buffer) is returned
    /// for the flushing task to write at once: the disk should not wait while this flush's entries go to the sink
    /// and its appenders wake, which `settle` does right after, as a separate job. Until then the filling buffer still
    /// holds this flush's bytes, and nothing is placed in it.
    private func written(_ result: Result<Void, StoreError>, _ done: Flush) -> Flush? {
        switch result {
        case .success:
            flushCount += 1
            if failure == nil, let next = takeFill() {
                settlePending = true
                let log = ShardBound(self)
                context.shard.post { log.value.settle(done, from: log.value.filling) }
                return next
            }
            flushing = false
            settle(done, from: writing)
            return nil
        case .failure(let error):
            flushing = false
            // What this flush carried is not durable, and later flushes could not be told apart from it after a
            // crash: stop the log. Everyone waiting gets the error; the appends were not acknowledged.
            failure = error
            context.reportFatal("the WAL of shard \(context.shardIndex) failed: \(error)")
            for waiter in done.waiters { waiter.continuation.resume(returning: .failure(error)) }
            let pending = fillWaiters
            fillWaiters = []
            for waiter in pending { waiter.continuation.resume(returning: .failure(.walFailed("\(error)"))) }
            placeWaiting()
            return nil
        }
    }

    /// A durable flush: its entries go to the sink, in order, then its appenders wake, in order.
    private func settle(_ flush: Flush, from buffer: UnsafeMutableRawBufferPointer) {
        applyFlushed(UnsafeRawBufferPointer(buffer), length: flush.length, base: flush.base)
        durablePosition = flush.end
        for waiter in flush.waiters { waiter.continuation.resume(returning: .success(waiter.position)) }
        if settlePending {
            settlePending = false
            placeWaiting()
        }
    }

    /// Hands every entry of a durable flush to the sink, in order.
    private func applyFlushed(_ bytes: UnsafeRawBufferPointer, length: Int, base: UInt64) {
        guard let sink else { return }
        var offset = 0
        while offset + WALEntryLayout.headerSize <= length {
            let payloadLength = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 16,
                                                                            as: UInt32.self)))
            let kind = WALEntryKind(rawValue: bytes[offset + 20]) ?? .padding
            if kind != .padding {
                let start = offset + WALEntryLayout.headerSize
                // Entries this process built itself: the sink cannot find them malformed.
                try? sink.apply(RecoveredEntry(kind: kind, position: base + UInt64(offset),
                                               payload: UnsafeRawBufferPointer(rebasing: bytes[start..<(start + payloadLength)])),
                                recovering: false)
            }
            offset += WALEntryLayout.headerSize + payloadLength
        }
    }

    /// The segment file `index` for writing: an existing one, a spare one renamed to it, or a new one created and
    /// fully written with zeros first, so that later writes overwrite allocated blocks (about twice as fast here as
    /// extending a file). Opening a segment for the first time starts preparing the next one in the background, so
    /// that rolling over waits for neither a rename nor a zero fill. Concurrent callers for the same index share one
    /// preparation.
    func segment(_ index: Int, prepareNext: Bool = true) async throws(StoreError) -> File {
        if let file = segments[index] { return file }
        if preparing.contains(index) {
            await withUnsafeContinuation { continuation in
                if preparing.contains(index) {
                    preparationWaiters[index, default: []].append(continuation)
                } else {
                    continuation.resume()
                }
            }
            if let file = segments[index] { return file }
        }
        preparing.insert(index)
        defer {
            preparing.remove(index)
            for waiter in preparationWaiters.removeValue(forKey: index) ?? [] { waiter.resume() }
        }
        let file = try await prepare(index)
        segments[index] = file
        if prepareNext && segments[index + 1] == nil && !preparing.contains(index + 1) {
            let log = ShardBound(self)
            context.spawn { _ = try? await log.value.segment(index + 1, prepareNext: false) }
        }
        return file
    }

    private func prepare(_ index: Int) async throws(StoreError) -> File {
        let path = segmentPath(index)
        do {
            var exists = await context.fileExists(path)
            if !exists, let old = spare.popLast() {
                // A segment nobody needs any more becomes this one. Its old entries sit at other positions, so they
                // fail the position-seeded checksum: recovery can never take them for entries of this segment. The
                // rename must be durable before anything is acknowledged from the segment under its new name.
                if let file = segments.removeValue(forKey: old) { try? await file.close() }
                try await context.rename(segmentPath(old), to: path)
                try await context.syncDirectory(configuration.directory)
                reusedSegments += 1
                exists = true
            }
            let file = try await context.open(path, options: FileOpenOptions(create: true))
            let size = exists ? await context.fileSize(path) : nil
            if !exists || size != configuration.segmentSizeBytes {
                try await file.allocate(at: 0, length: segmentSize)
                let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
                defer { zeros.deallocate() }
                zeros.initializeMemory(as: UInt8.self, repeating: 0)
                var offset = 0
                while offset < configuration.segmentSizeBytes {
                    let n = min(zeros.count, configuration.segmentSizeBytes - offset)
                    offset += try await file.write(UnsafeRawBufferPointer(rebasing: zeros[..<n]), at: UInt64(offset))
                }
                try await file.fullSync()
                if !exists { try await context.syncDirectory(configuration.directory) }
            }
            return file
        } catch {
            throw .io(error)
        }
    }

    /// Makes the segment the next flush writes into, and the one after it, ready (renamed from spares, or created
    /// and zero-filled), so that neither waits on the write path nor competes with it in the background. The open
    /// of a store calls it before it serves.
    public func prepareAhead() async throws(StoreError) {
        let current = Int(nextFlushPosition / segmentSize)
        _ = try await segment(current, prepareNext: false)
        _ = try await segment(current + 1, prepareNext: false)
    }

    /// An existing segment, for reading: never created here.
    private func existingSegment(_ index: Int) async throws(StoreError) -> File {
        if let file = segments[index] { return file }
        let path = segmentPath(index)
        guard await context.fileExists(path), !spare.contains(index) else {
            throw .corruption(file: path, position: 0, detail: "segment \(index) is missing")
        }
        do {
            let file = try await context.open(path, options: FileOpenOptions())
            if let raced = segments[index] {
                try? await file.close()
                return raced
            }
            segments[index] = file
            return file
        } catch {
            throw .io(error)
        }
    }

    /// Hands segments below `limit` that hold nothing live any more to the spare pool, to be renamed to the next
    /// index when the log needs one. Called after a checkpoint at or past `limit`'s start is durable: recovery never
    /// reads below it again, and `live` (the segments the checkpointed index points into) stay. Segments being read
    /// stay too, until a later call. Spares beyond `maxSpareSegments` are deleted.
    public func reclaim(below limit: Int, live: Set<Int>) async {
        var candidates = Set(segments.keys)
        candidates.formUnion(segmentsAtOpen)
        for index in candidates.sorted() where index < limit && !live.contains(index) && readers[index] == nil
            && !spare.contains(index)
        {
            if await context.fileExists(segmentPath(index)) { spare.append(index) }
        }
        segmentsAtOpen.removeAll { $0 < limit && spare.contains($0) }
        while spare.count > configuration.maxSpareSegments {
            let index = spare.removeFirst()
            if let file = segments.removeValue(forKey: index) { try? await file.close() }
            try? await context.removeFile(segmentPath(index))
        }
    }

    /// Reads `length` bytes at WAL position `position` (an entry's payload) back from disk.
    public func read(at position: UInt64, length: Int) async throws(StoreError) -> [UInt8] {
        let block = UInt64(WALEntryLayout.blockSize)
        let index = Int(position / segmentSize)
        let offset = position % segmentSize
        let start = offset / block * block
        let end = (offset + UInt64(length) + block - 1) / block * block
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(end - start), alignment: Int(block))
        defer { buffer.deallocate() }
        readers[index, default: 0] += 1
        defer {
            readers[index]! -= 1
            if readers[index] == 0 { readers[index] = nil }
        }
        do {
            let file = try await existingSegment(index)
            var done = 0
            while done < buffer.count {
                let n = try await file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]),
                                            at: start + UInt64(done))
                if n == 0 { throw StoreError.corruption(file: segmentPath(index), position: start + UInt64(done),
                                                        detail: "segment shorter than expected") }
                done += n
            }
        } catch let error as StoreError {
            throw error
        } catch let error as IOError {
            throw .io(error)
        } catch {
            throw .walFailed("\(error)")
        }
        let from = Int(offset - start)
        return Array(buffer[from..<(from + length)])
    }

    /// Waits until every append placed so far is flushed (or failed) and no segment is being prepared.
    public func drain() async {
        while flushing || settlePending || fillOffset > 0 || !preparing.isEmpty {
            if !flushing && failure == nil { flush() }
            if failure != nil && !flushing { break }
            try? await context.sleep(for: .microseconds(100))
        }
    }

    /// Waits for the flush in progress (and a segment being prepared), then closes every segment file.
    public func close() async {
        await drain()
        for (_, file) in segments { try? await file.close() }
        segments = [:]
    }
}

/// An append waiting in line for room in the filling buffer; its caller keeps `payload` alive while it waits.
struct WaitingEntry {
    let kind: WALEntryKind
    let payload: UnsafeRawBufferPointer
    let prefix: UInt64?
    let continuation: UnsafeContinuation<Result<UInt64, StoreError>, Never>
}

/// An append copied into a flush, waiting for it to be durable.
struct PlacedEntry {
    let position: UInt64
    let continuation: UnsafeContinuation<Result<UInt64, StoreError>, Never>
}
