/// Byte positions of the batch header (see docs/record-format.md). All integers are little-endian.
enum BatchLayout {
    static let checksum = 0  // u64 XXH3-64 of bytes [8, batchLength)
    static let batchLength = 8  // u32 whole batch in bytes
    static let magic = 12  // u32
    static let version = 16  // u8
    static let attributes = 17  // u8, reserved: 0
    static let headerSize = 18  // u16 = 64
    static let recordCount = 20  // u32 the batch's `length`
    static let streamID = 24  // u64
    static let rangeIndex = 32  // u32
    static let propertiesLength = 36  // u32 bytes of batch properties after the header
    static let baseOffset = 40  // u64
    static let baseTimestamp = 48  // i64 milliseconds since the Unix epoch
    static let maxTimestampDelta = 56  // u32 milliseconds: largest record timestamp minus base
    static let propertyCount = 60  // u16 batch properties
    static let reserved = 62  // u16: 0
    static let size = 64

    static let magicValue: UInt32 = 0x4252_5345  // "ESRB" in memory order
    static let currentVersion: UInt8 = 1

    /// Per record: u32 length of what follows, i32 timestamp delta, u16 header count, u16 property count,
    /// u32 value length; then the headers, the properties and the value.
    static let recordFixed = 16
    /// Per header or property: u16 key length, u32 value length, key, value.
    static let pairFixed = 6
}

extension UnsafeRawBufferPointer {
    @inline(__always)
    func le<T: FixedWidthInteger>(_ offset: Int, as: T.Type = T.self) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension UnsafeMutableRawBufferPointer {
    @inline(__always)
    func storeLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}
