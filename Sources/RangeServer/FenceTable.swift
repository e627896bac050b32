import CSupport
import Foundation
import Platform
import Reactor
import Store

/// The epochs that fenced ranges on one shard, kept on disk: a new writer's fence must outlive a restart, or the
/// writer it fenced could append to a replica that forgot the fence. Appends and creations with an older epoch are
/// refused (`EPOCH_FENCED`); a fence of a range the shard does not hold yet is kept too, so that a late creation by
/// the old writer is refused.
///
/// The file `data_dir/fences-<shard>` holds 32-byte records (u64 stream id, u32 range index, u32 zero, u64 epoch,
/// u64 XXH3 of the first 24 bytes, little-endian), written with RWF_DSYNC before the fence is answered. Loading skips
/// a record that fails its checksum (a torn write) and reads on. Shard-bound.
final class FenceTable {
    static let recordBytes = 32
    let path: String
    let context: ShardContext
    /// Fences known to be on disk: only these are answered and enforced.
    private var epochs: [RangeKey: UInt64] = [:]
    private var file: File?
    /// Records the file has room for (the next one goes at `records × 32`).
    private var records = 0
    /// One write at a time, in order: a later record never lands before an earlier one is durable.
    private var writing = false
    private var waiters: [UnsafeContinuation<Void, Never>] = []
    private var closed = false

    /// Loads the fences of `path` (none when there is no file).
    static func load(path: String, context: ShardContext) async throws(IOError) -> FenceTable {
        FenceTable(path: path, context: context, contents: try await context.readWholeFile(path, limit: 1 << 30))
    }

    private init(path: String, context: ShardContext, contents: [UInt8]?) {
        self.path = path
        self.context = context
        guard let data = contents else { return }
        records = (data.count + Self.recordBytes - 1) / Self.recordBytes
        data.withUnsafeBytes { raw in
            var position = 0
            // Every record has its own checksum: a damaged one (a torn write) is skipped, not the ones after it.
            while position + Self.recordBytes <= raw.count {
                let record = UnsafeRawBufferPointer(rebasing: raw[position..<(position + Self.recordBytes)])
                position += Self.recordBytes
                let checksum = record.loadUnaligned(fromByteOffset: 24, as: UInt64.self).littleEndian
                guard cs_xxh3_64(record.baseAddress, 24, 0) == checksum else { continue }
                let stream = record.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian
                let index = record.loadUnaligned(fromByteOffset: 8, as: UInt32.self).littleEndian
                let epoch = record.loadUnaligned(fromByteOffset: 16, as: UInt64.self).littleEndian
                let key = RangeKey(streamID: stream, index: index)
                epochs[key] = max(epochs[key] ?? 0, epoch)
            }
        }
    }

    /// The epoch that fenced `key` (0: none), once durable.
    func epoch(of key: RangeKey) -> UInt64 { epochs[key] ?? 0 }

    /// Records that `epoch` fences `key`, durably, before it returns (at once when it already is).
    func fence(_ key: RangeKey, epoch: UInt64) async throws(IOError) {
        guard epoch > self.epoch(of: key) else { return }
        while writing {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                if writing { waiters.append(continuation) } else { continuation.resume() }
            }
        }
        writing = true
        defer {
            writing = false
            if !waiters.isEmpty { waiters.removeFirst().resume() }
        }
        // Another fence of this key may have landed while this one waited.
        guard epoch > self.epoch(of: key) else { return }
        guard !closed else { throw IOError(.write, .shutdown, target: path) }
        var record = [UInt8](repeating: 0, count: Self.recordBytes)
        record.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: key.streamID.littleEndian, toByteOffset: 0, as: UInt64.self)
            raw.storeBytes(of: key.index.littleEndian, toByteOffset: 8, as: UInt32.self)
            raw.storeBytes(of: epoch.littleEndian, toByteOffset: 16, as: UInt64.self)
            raw.storeBytes(of: cs_xxh3_64(raw.baseAddress, 24, 0).littleEndian, toByteOffset: 24, as: UInt64.self)
        }
        if file == nil {
            file = try await context.open(path, options: FileOpenOptions(create: true, direct: false))
            try await context.syncDirectory((path as NSString).deletingLastPathComponent)
        }
        guard let file, !closed else { throw IOError(.write, .shutdown, target: path) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.recordBytes, alignment: 8)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: record)
        let offset = UInt64(records * Self.recordBytes)
        // A failed or short write leaves the slot damaged; the next record goes after it (loading skips it).
        records += 1
        let written = try await file.write(UnsafeRawBufferPointer(buffer), at: offset, durable: true)
        guard written == Self.recordBytes else {
            throw IOError(.write, .invalidArgument("short write of \(written) bytes"), target: path)
        }
        epochs[key] = epoch
    }

    func close() async {
        closed = true
        guard !writing else { return }
        try? await file?.close()
        file = nil
    }
}

@available(*, unavailable)
extension FenceTable: Sendable {}
