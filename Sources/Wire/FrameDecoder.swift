import CSupport

/// Turns a byte stream into frames, whatever the split: bytes may arrive one at a time or many frames at once.
///
/// Bounded: it holds at most one incomplete frame, and only the bytes of it that have arrived (never memory sized by a
/// length prefix). Each field of the fixed part (length, magic, version, flags, reserved bytes, header length) is
/// checked as soon as its bytes are in, before the frame's body is waited for. After an error the stream cannot be
/// re-synchronised, so the decoder keeps failing with the same error; the connection must be closed.
public struct FrameDecoder: Sendable {
    public let limits: FrameLimits
    private var pending: [UInt8] = []
    private var failure: WireError?
    /// The pending frame's whole fixed part has been checked.
    private var prefixChecked = false

    public init(limits: FrameLimits = .default) {
        self.limits = limits
    }

    /// Bytes held for a frame not yet complete.
    public var bufferedBytes: Int { pending.count }

    /// Feeds `bytes` and calls `onFrame` for every frame they complete, in order.
    public mutating func decode(_ bytes: UnsafeRawBufferPointer, _ onFrame: (Frame) -> Void) throws(WireError) {
        if let failure { throw failure }
        do {
            try decodeUnchecked(bytes, onFrame)
        } catch {
            failure = error
            pending = []
            throw error
        }
    }

    /// Convenience: the frames `bytes` complete.
    public mutating func decode(_ bytes: [UInt8]) throws(WireError) -> [Frame] {
        var frames: [Frame] = []
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(WireError) in try decode(raw) { frames.append($0) } }
        }
        try result.get()
        return frames
    }

    private mutating func decodeUnchecked(_ input: UnsafeRawBufferPointer, _ onFrame: (Frame) -> Void)
        throws(WireError)
    {
        var rest = input
        // Complete a frame begun in an earlier call, taking only the bytes it still needs.
        while !pending.isEmpty && !rest.isEmpty {
            let need = try neededForPending()
            let take = min(need, rest.count)
            pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: rest[..<take]))
            rest = UnsafeRawBufferPointer(rebasing: rest[take...])
            try checkPending()
            if try neededForPending() == 0 {
                let limits = limits
                let frame = try pending.withUnsafeBytes { all in
                    Result { () throws(WireError) -> Frame in try Self.frame(from: all, limits: limits) }
                }.get()
                pending.removeAll(keepingCapacity: pending.capacity <= 64 << 10)
                prefixChecked = false
                onFrame(frame)
            }
        }
        // Whole frames straight from the input, without staging them.
        while rest.count >= 4 {
            let length = try FrameHeaderCodec.frameLength(rest, limits: limits)
            guard rest.count >= length + 4 else { break }
            onFrame(try Self.frame(from: UnsafeRawBufferPointer(rebasing: rest[..<(length + 4)]), limits: limits))
            rest = UnsafeRawBufferPointer(rebasing: rest[(length + 4)...])
        }
        if !rest.isEmpty {
            // What has arrived of the fixed part is checked now, before a byte of the frame is held. Memory grows
            // with the bytes that arrive, never from the declared length.
            try FrameHeaderCodec.checkPrefix(rest, limits: limits)
            prefixChecked = rest.count >= FrameLayout.size
            pending.append(contentsOf: rest)
        }
    }

    /// Checks the fixed part of the pending frame as far as it has arrived (once all of it is in, no more).
    private mutating func checkPending() throws(WireError) {
        guard !prefixChecked else { return }
        let limits = limits
        try pending.withUnsafeBytes { raw in
            Result { () throws(WireError) in try FrameHeaderCodec.checkPrefix(raw, limits: limits) }
        }.get()
        prefixChecked = pending.count >= FrameLayout.size
    }

    /// Bytes the pending frame still needs; checks its length prefix as soon as it is complete.
    private func neededForPending() throws(WireError) -> Int {
        if pending.count < 4 { return 4 - pending.count }
        let limits = limits
        let length = try pending.withUnsafeBytes { raw in
            Result { () throws(WireError) -> Int in try FrameHeaderCodec.frameLength(raw, limits: limits) }
        }.get()
        return length + 4 - pending.count
    }

    /// Parses one complete frame (exactly its bytes), verifying its checksum.
    static func frame(from bytes: UnsafeRawBufferPointer, limits: FrameLimits) throws(WireError) -> Frame {
        let header = try FrameHeaderCodec.parse(bytes, limits: limits)
        let body = UnsafeRawBufferPointer(rebasing: bytes[FrameLayout.size...])
        assert(body.count == header.bodyLength)
        let computed = cs_xxh3_64(body.baseAddress, body.count, 0)
        guard computed == header.checksum else {
            throw .checksumMismatch(requestID: header.requestID, stored: header.checksum, computed: computed)
        }
        return Frame(rawOperation: header.rawOperation, flags: header.flags, requestID: header.requestID,
                     body: Array(body), headerLength: header.headerLength)
    }
}
