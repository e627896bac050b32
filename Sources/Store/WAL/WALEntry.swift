import CSupport

/// What a WAL entry records.
public enum WALEntryKind: UInt8, Sendable {
    /// A record batch appended to a range (the payload is the batch).
    case append = 1
    case createRange = 2
    case sealRange = 3
    case trimRange = 4
    case deleteRange = 5
    /// Filler up to the next block boundary; carries nothing.
    case padding = 6
    /// A record batch appended to a range, with the writer's acknowledged end it carried: the payload is that end
    /// (u64, little-endian) followed by the batch.
    case appendAcknowledged = 7
    /// The writer's acknowledged end of a range (a `RangeRecord`), from an APPEND without records.
    case acknowledge = 8
    /// A sealed replica's index ends at the offset (a `RangeRecord`): a batch there failed its checksum when read
    /// back, and it and the ones after it are copied again from a peer.
    case discardFrom = 9
}

/// The framing of one WAL entry (docs/store.md). Little-endian:
///
///     0   u64 checksum            XXH3-64 of bytes [8, 24 + length), seeded with the entry's WAL position
///     8   u64 previous_flush_end  WAL position where the flush before this entry's flush ended
///     16  u32 length              payload bytes
///     20  u8  kind
///     21  u8  version             1
///     22  u16 reserved            0
///     24  payload
///
/// Seeding the checksum with the position means an entry left in a reused segment, at any other position, can never
/// pass for a current one. `previous_flush_end` lets recovery tell a torn last write (valid entries after the bad
/// one all belong to the same flush) from corruption in the middle (a valid entry of a later flush exists).
public enum WALEntryLayout {
    public static let headerSize = 24
    public static let version: UInt8 = 1
    /// Writes go in whole blocks of this size, at offsets that are multiples of it (O_DIRECT).
    public static let blockSize = 4096

    /// Writes an entry at `offset` of `buffer`, whose byte 0 sits at WAL position `base`.
    /// With a `prefix`, the payload is the prefix (u64, little-endian) followed by `payload`.
    static func write(kind: WALEntryKind, payload: UnsafeRawBufferPointer, prefix: UInt64? = nil,
                      previousFlushEnd: UInt64, into buffer: UnsafeMutableRawBufferPointer, at offset: Int,
                      base: UInt64) {
        let b = buffer
        let prefixSize = prefix == nil ? 0 : 8
        let length = prefixSize + payload.count
        b.storeBytes(of: previousFlushEnd.littleEndian, toByteOffset: offset + 8, as: UInt64.self)
        b.storeBytes(of: UInt32(length).littleEndian, toByteOffset: offset + 16, as: UInt32.self)
        b[offset + 20] = kind.rawValue
        b[offset + 21] = version
        b.storeBytes(of: UInt16(0), toByteOffset: offset + 22, as: UInt16.self)
        if let prefix { b.storeBytes(of: prefix.littleEndian, toByteOffset: offset + headerSize, as: UInt64.self) }
        if payload.count > 0 {
            (b.baseAddress! + offset + headerSize + prefixSize).copyMemory(from: payload.baseAddress!,
                                                                           byteCount: payload.count)
        }
        let checksum = cs_xxh3_64(b.baseAddress! + offset + 8, headerSize - 8 + length, base + UInt64(offset))
        b.storeBytes(of: checksum.littleEndian, toByteOffset: offset, as: UInt64.self)
    }

    /// Writes a padding entry from `offset` to exactly `end`. Needs at least a header's worth of room.
    static func writePadding(into buffer: UnsafeMutableRawBufferPointer, from offset: Int, to end: Int, base: UInt64,
                             previousFlushEnd: UInt64) {
        precondition(end - offset >= headerSize)
        let zeros = UnsafeMutableRawBufferPointer(rebasing: buffer[(offset + headerSize)..<end])
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        write(kind: .padding, payload: UnsafeRawBufferPointer(zeros), previousFlushEnd: previousFlushEnd,
              into: buffer, at: offset, base: base)
    }

    /// Where the padding that closes a write ending at `offset` ends: the next block boundary with room for a
    /// padding header (or `offset` itself when it is a boundary).
    static func paddedEnd(_ offset: Int) -> Int {
        let boundary = (offset + blockSize - 1) / blockSize * blockSize
        if boundary == offset { return offset }
        return boundary - offset >= headerSize ? boundary : boundary + blockSize
    }

    struct Header {
        let kind: WALEntryKind
        let length: Int
        let previousFlushEnd: UInt64
    }

    /// Checks the entry at `offset` of `bytes` (whose byte 0 is WAL position `base`): its header, or nil when it is
    /// not a valid entry at this position.
    static func validate(_ bytes: UnsafeRawBufferPointer, at offset: Int, base: UInt64, maxPayload: Int) -> Header? {
        guard offset >= 0, bytes.count - offset >= headerSize else { return nil }
        let length = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 16, as: UInt32.self)))
        guard length <= maxPayload, length <= bytes.count - offset - headerSize else { return nil }
        guard let kind = WALEntryKind(rawValue: bytes[offset + 20]), bytes[offset + 21] == version,
              bytes[offset + 22] == 0, bytes[offset + 23] == 0
        else { return nil }
        let stored = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
        let computed = cs_xxh3_64(bytes.baseAddress! + offset + 8, headerSize - 8 + length, base + UInt64(offset))
        guard stored == computed else { return nil }
        let previous = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self))
        return Header(kind: kind, length: length, previousFlushEnd: previous)
    }
}
