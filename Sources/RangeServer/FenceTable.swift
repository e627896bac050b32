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
/// u64 XXH3 of the first 24 bytes, little-endian), written with RWF_DSYNC before the fence is answered. Loading stops
/// at the first record that fails its checksum (a torn tail). Shard-bound.
final class FenceTable {
    static let recordBytes = 32
    let path: String
    let context: ShardContext
    private var epochs: [RangeKey: UInt64] = [:]
    private var file: File?
    private var records = 0

    init(path: String, context: ShardContext) {
        self.path = path
        self.context = context
        guard let data = FileManager.default.contents(atPath: path) else { return }
        data.withUnsafeBytes { raw in
            var position = 0
            while position + Self.recordBytes <= raw.count {
                let record = UnsafeRawBufferPointer(rebasing: raw[position..<(position + Self.recordBytes)])
                let checksum = record.loadUnaligned(fromByteOffset: 24, as: UInt64.self).littleEndian
                guard cs_xxh3_64(record.baseAddress, 24, 0) == checksum else { break }
                let stream = record.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian
                let index = record.loadUnaligned(fromByteOffset: 8, as: UInt32.self).littleEndian
                let epoch = record.loadUnaligned(fromByteOffset: 16, as: UInt64.self).littleEndian
                let key = RangeKey(streamID: stream, index: index)
                epochs[key] = max(epochs[key] ?? 0, epoch)
                position += Self.recordBytes
                records += 1
            }
        }
    }

    /// The epoch that fenced `key` (0: none).
    func epoch(of key: RangeKey) -> UInt64 { epochs[key] ?? 0 }

    /// Records that `epoch` fences `key`, durably, before it returns.
    func fence(_ key: RangeKey, epoch: UInt64) async throws(IOError) {
        guard epoch > self.epoch(of: key) else { return }
        let offset = UInt64(records * Self.recordBytes)
        records += 1
        epochs[key] = epoch
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
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.recordBytes, alignment: 8)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: record)
        _ = try await file!.write(UnsafeRawBufferPointer(buffer), at: offset, durable: true)
    }

    func close() async {
        try? await file?.close()
        file = nil
    }
}

@available(*, unavailable)
extension FenceTable: Sendable {}
