import CSupport
import Foundation
import Platform
import Reactor

/// A snapshot of a shard's ranges and their index, valid for the WAL up to `position`: recovery loads it and replays
/// only the log from there. Two slot files, `checkpoint-0.ckpt` and `checkpoint-1.ckpt`, are written in turn, each
/// over the older one, so a torn checkpoint write always leaves the previous checkpoint intact.
///
/// Layout (little-endian, docs/store.md):
///
///     0   u64 magic        "ESCKPT" 0 1
///     8   u64 checksum     XXH3-64 of bytes [16, length)
///     16  u64 length       bytes of the checkpoint (the file is padded to 4 KiB after it)
///     24  u64 sequence     higher is newer
///     32  u64 position     WAL position: every entry before it is reflected here
///     40  u64 segment size the WAL's segment size when written
///     48  u32 range count
///     52  u32 version      2 (1 is still read)
///     56  ranges
///
/// Each range: u64 stream id, u32 range index, u32 flags (bit 0: sealed), u64 created start, u64 start,
/// u64 confirmed end, u64 sealed end, u64 acknowledged end (version 2 only), u64 batch count (64 bytes), then per
/// batch: u64 base offset, u64 end offset, u64 payload position, u32 length, u32 reserved, i64 max timestamp
/// (40 bytes).
struct Checkpoint {
    static let magic: UInt64 = 0x0100_5450_4B43_5345  // "ESCKPT\0\u{1}" little-endian
    static let version: UInt32 = 2
    static let headerSize = 56
    static let rangeSize = 64
    static let batchSize = 40

    var sequence: UInt64
    var position: UInt64
    var ranges: [RangeKey: RangeReplica]

    static func slotPath(_ directory: String, _ slot: Int) -> String { "\(directory)/checkpoint-\(slot).ckpt" }

    /// Bytes the checkpoint of `ranges` takes, before padding.
    static func encodedSize(_ ranges: [RangeKey: RangeReplica]) -> Int {
        ranges.values.reduce(headerSize) { $0 + rangeSize + $1.batches.count * batchSize }
    }

    /// Writes the checkpoint of `ranges` into `buffer` (at least `encodedSize` bytes) and returns its length. Also
    /// returns the segments its batches point into.
    static func encode(sequence: UInt64, position: UInt64, segmentSize: Int, ranges: [RangeKey: RangeReplica],
                       into buffer: UnsafeMutableRawBufferPointer) -> (length: Int, live: Set<Int>) {
        var live = Set<Int>()
        var offset = headerSize
        func put<T: FixedWidthInteger>(_ value: T) {
            buffer.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
            offset += MemoryLayout<T>.size
        }
        for range in ranges.values {
            put(range.key.streamID)
            put(range.key.index)
            put(UInt32(range.sealedEnd == nil ? 0 : 1))
            put(range.createdStart)
            put(range.start)
            put(range.confirmedEnd)
            put(range.sealedEnd ?? 0)
            put(range.acknowledgedEnd)
            put(UInt64(range.batches.count))
            range.collectSegments(segmentSize: UInt64(segmentSize), into: &live)
            for batch in range.batches {
                put(batch.baseOffset)
                put(batch.endOffset)
                put(batch.payloadPosition)
                put(UInt32(batch.length))
                put(UInt32(0))
                put(batch.maxTimestamp)
            }
        }
        let length = offset
        offset = 0
        put(magic)
        put(UInt64(0))
        put(UInt64(length))
        put(sequence)
        put(position)
        put(UInt64(segmentSize))
        put(UInt32(ranges.count))
        put(version)
        let checksum = cs_xxh3_64(buffer.baseAddress! + 16, length - 16, 0)
        buffer.storeBytes(of: checksum.littleEndian, toByteOffset: 8, as: UInt64.self)
        return (length, live)
    }

    enum DecodeFailure: Error {
        /// Not a complete checkpoint (torn, or never finished): the other slot is the one to use.
        case invalid(String)
    }

    /// Decodes a checkpoint, checking its checksum and that every range's index is consistent.
    static func decode(_ bytes: UnsafeRawBufferPointer, segmentSize: Int) throws(DecodeFailure) -> Checkpoint {
        guard bytes.count >= headerSize else { throw .invalid("shorter than a header") }
        var offset = 0
        func get<T: FixedWidthInteger>(_: T.Type = T.self) throws(DecodeFailure) -> T {
            guard offset + MemoryLayout<T>.size <= bytes.count else { throw .invalid("truncated at byte \(offset)") }
            defer { offset += MemoryLayout<T>.size }
            return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }
        guard try get(UInt64.self) == magic else { throw .invalid("bad magic") }
        let checksum: UInt64 = try get()
        let length = Int(clamping: try get(UInt64.self))
        guard length >= headerSize, length <= bytes.count else { throw .invalid("length \(length) out of bounds") }
        guard cs_xxh3_64(bytes.baseAddress! + 16, length - 16, 0) == checksum else { throw .invalid("checksum") }
        let sequence: UInt64 = try get()
        let position: UInt64 = try get()
        guard try get(UInt64.self) == UInt64(segmentSize) else {
            throw .invalid("written for another segment size")
        }
        let rangeCount: UInt32 = try get()
        let version: UInt32 = try get()
        guard version == 1 || version == Self.version else { throw .invalid("unknown version \(version)") }
        var ranges: [RangeKey: RangeReplica] = [:]
        for _ in 0..<rangeCount {
            let key = RangeKey(streamID: try get(), index: try get())
            let flags: UInt32 = try get()
            let createdStart: UInt64 = try get()
            let start: UInt64 = try get()
            let confirmedEnd: UInt64 = try get()
            let sealedEnd: UInt64 = try get()
            let acknowledgedEnd: UInt64 = version >= 2 ? try get() : 0
            let batchCount: UInt64 = try get()
            guard batchCount <= UInt64((length - offset) / batchSize) else { throw .invalid("batch count of \(key)") }
            let range = RangeReplica(key: key, createdStart: createdStart, start: start, confirmedEnd: confirmedEnd)
            var previousEnd: UInt64?
            for _ in 0..<batchCount {
                let base: UInt64 = try get()
                let end: UInt64 = try get()
                let payload: UInt64 = try get()
                let batchLength: UInt32 = try get()
                _ = try get(UInt32.self)
                let maxTimestamp: Int64 = try get()
                guard end > base, base >= (previousEnd ?? start), previousEnd == nil || base == previousEnd,
                      end <= confirmedEnd
                else { throw .invalid("batch [\(base), \(end)) of \(key) out of order") }
                range.restore(BatchLocation(baseOffset: base, endOffset: end, payloadPosition: payload,
                                            length: Int(batchLength), maxTimestamp: maxTimestamp))
                previousEnd = end
            }
            guard previousEnd == nil || previousEnd == confirmedEnd else { throw .invalid("confirmed end of \(key)") }
            if flags & 1 != 0 { range.sealedEnd = sealedEnd }
            range.acknowledgedEnd = acknowledgedEnd
            range.acknowledgedPending = acknowledgedEnd
            ranges[key] = range
        }
        guard offset == length else { throw .invalid("\(length - offset) bytes left over") }
        return Checkpoint(sequence: sequence, position: position, ranges: ranges)
    }

    /// The newest valid checkpoint in `directory`, nil when there is no slot file at all (a new store). A slot file
    /// only ever appears complete (the first write of each goes to a temporary file renamed into place), and a slot
    /// is only overwritten while the other holds a valid checkpoint; so slot files that exist with none valid is
    /// corruption: the log before the checkpoint may be gone, and recovery cannot go on.
    static func load(directory: String, segmentSize: Int, on context: ShardContext)
        async throws(StoreError) -> (newest: Checkpoint, positions: [Int: UInt64])?
    {
        var best: Checkpoint?
        var positions: [Int: UInt64] = [:]
        var failures: [String] = []
        for slot in 0..<2 {
            let path = slotPath(directory, slot)
            guard let size = await context.fileSize(path) else { continue }
            let padded = max(WALEntryLayout.blockSize, (size + 4095) / 4096 * 4096)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: padded, alignment: WALEntryLayout.blockSize)
            defer { buffer.deallocate() }
            var count = 0
            do throws(IOError) {
                let file = try await context.open(path, options: FileOpenOptions(readOnly: true))
                do throws(IOError) {
                    while count < padded {
                        let n = try await file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[count...]),
                                                    at: UInt64(count))
                        if n == 0 { break }
                        count += n
                        // A short read that ends between blocks is the end of a file torn at a sector boundary by a
                        // crash: the next direct read could not even be aligned. What was read fails its checks
                        // below, and the other slot is used (the simulation found a node that could never boot).
                        if count % WALEntryLayout.blockSize != 0 { break }
                    }
                } catch {
                    try? await file.close()
                    throw error
                }
                try await file.close()
            } catch {
                throw .io(error)
            }
            do {
                let checkpoint = try decode(UnsafeRawBufferPointer(rebasing: buffer[..<count]),
                                            segmentSize: segmentSize)
                if checkpoint.sequence >= best?.sequence ?? 0 { best = checkpoint }
                positions[slot] = checkpoint.position
            } catch {
                if case .invalid(let why) = error { failures.append("\(path): \(why)") }
            }
        }
        if best == nil && !failures.isEmpty {
            throw .corruption(file: slotPath(directory, 0), position: 0,
                              detail: "no valid checkpoint: \(failures.joined(separator: "; "))")
        }
        return best.map { ($0, positions) }
    }
}

/// Writes checkpoints of a shard's store, alternating between the two slots. Shard-bound.
final class CheckpointWriter {
    let directory: String
    let segmentSize: Int
    let context: ShardContext
    /// The newest durable checkpoint's sequence and position.
    private(set) var sequence: UInt64
    private(set) var position: UInt64
    /// The positions of the valid checkpoint in each slot. Recovery falls back to the older one when the newer turns
    /// out damaged, so the log from the older one's position on must stay: that is `reclaimLimit`.
    private var slotPositions: [Int: UInt64]
    private(set) var written = 0
    /// Time the last checkpoint spent encoding on the shard (synchronous) and writing (asynchronous).
    private(set) var lastEncode: Duration = .zero
    private(set) var lastWrite: Duration = .zero

    init(directory: String, segmentSize: Int, context: ShardContext, sequence: UInt64, position: UInt64,
         slotPositions: [Int: UInt64]) {
        self.directory = directory
        self.segmentSize = segmentSize
        self.context = context
        self.sequence = sequence
        self.position = position
        self.slotPositions = slotPositions
    }

    /// The WAL position below which no checkpoint recovery could load needs the log: the oldest valid slot's.
    var reclaimLimit: UInt64 { slotPositions.values.min() ?? 0 }

    /// Encodes `ranges` (their state now, which reflects the WAL exactly up to `position`) and makes the checkpoint
    /// durable. Returns the segments its index points into.
    func write(ranges: [RangeKey: RangeReplica], position: UInt64) async throws(StoreError) -> Set<Int> {
        let began = context.now
        let size = Checkpoint.encodedSize(ranges)
        let padded = (size + 4095) / 4096 * 4096
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: padded, alignment: WALEntryLayout.blockSize)
        defer { buffer.deallocate() }
        let next = sequence + 1
        let (length, live) = Checkpoint.encode(sequence: next, position: position, segmentSize: segmentSize,
                                               ranges: ranges, into: buffer)
        if padded > length {
            UnsafeMutableRawBufferPointer(rebasing: buffer[length..<padded]).initializeMemory(as: UInt8.self,
                                                                                          repeating: 0)
        }
        let encoded = context.now
        lastEncode = encoded - began
        let slot = Int(next % 2)
        let path = Checkpoint.slotPath(directory, slot)
        // From here until the write is durable the slot holds nothing valid.
        slotPositions[slot] = nil
        let fresh = await !context.fileExists(path)
        func write(_ file: File) async throws(IOError) {
            var done = 0
            while done < padded {
                let n = min(16 << 20, padded - done)
                done += try await file.write(UnsafeRawBufferPointer(rebasing: buffer[done..<(done + n)]), at: UInt64(done))
            }
        }
        do throws(IOError) {
            if fresh {
                // The slot's first write replaces nothing: durably, so that the slot only ever appears complete.
                let file = try await context.replaceDurably(path, options: FileOpenOptions(create: true)) {
                    file throws(IOError) in try await write(file)
                }
                try await file.close()
            } else {
                let file = try await context.open(path, options: FileOpenOptions(create: true))
                do throws(IOError) {
                    try await write(file)
                    try await file.sync()
                } catch {
                    try? await file.close()
                    throw error
                }
                try await file.close()
            }
        } catch {
            throw .io(error)
        }
        lastWrite = context.now - encoded
        slotPositions[slot] = position
        sequence = next
        self.position = position
        written += 1
        return live
    }
}
