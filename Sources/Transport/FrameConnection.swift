import Platform
import Reactor
import Wire

/// A TCP connection carrying frames, on one shard: a bounded queue of outgoing frames written by one writer task (so
/// frames never interleave), and a read loop that hands every decoded frame to a handler. Shard-bound.
public final class FrameConnection {
    public let connection: TCPConnection
    public let context: ShardContext
    public let maxQueuedBytes: Int
    public let limits: FrameLimits
    private var queue: [OutgoingBytes] = []
    public private(set) var queuedBytes = 0
    /// When the send queue last moved (a send completed, or it was empty): a peer that stops reading is found by how
    /// long ago this was while bytes wait.
    public private(set) var lastSendProgress: Instant
    /// Told every change of `queuedBytes` (a server counts them against its byte bound).
    public var onQueuedBytesChange: ((Int) -> Void)?
    private var writing = false
    public private(set) var closed = false

    /// The most bytes read from the socket at once (large records arrive in fewer reads with a larger buffer); the
    /// buffer starts at 16 KiB and grows to this while reads fill it.
    public let receiveBufferBytes: Int

    public init(_ connection: TCPConnection, context: ShardContext, maxQueuedBytes: Int = 64 << 20,
                limits: FrameLimits = .default, receiveBufferBytes: Int = 64 << 10) {
        self.connection = connection
        self.context = context
        self.maxQueuedBytes = maxQueuedBytes
        self.limits = limits
        self.receiveBufferBytes = receiveBufferBytes
        lastSendProgress = context.now
    }

    public var peer: String { connection.peer }

    /// Queues a frame; false when the connection is closed or its queue is full (the frame is dropped).
    @discardableResult
    public func send(_ frame: Frame) -> Bool {
        guard !closed, frame.encodedSize <= limits.maxFrameBytes else { return false }
        let bytes = OutgoingBytes(count: frame.encodedSize)
        guard (try? frame.encode(into: bytes.buffer, limits: limits)) != nil else { return false }
        return enqueue(bytes)
    }

    /// Queues a copy of encoded wire bytes with `requestID` written into them; false when the connection is closed
    /// or its queue is full.
    @discardableResult
    public func send(wire: [UInt8], requestID: UInt64) -> Bool {
        guard !closed, wire.count >= FrameLayout.size else { return false }
        let bytes = OutgoingBytes(count: wire.count)
        bytes.buffer.copyBytes(from: wire)
        bytes.buffer.storeBytes(of: requestID.bigEndian, toByteOffset: 12, as: UInt64.self)
        return enqueue(bytes)
    }

    private func enqueue(_ bytes: OutgoingBytes) -> Bool {
        guard queuedBytes + bytes.buffer.count <= maxQueuedBytes else { return false }
        if queuedBytes == 0 { lastSendProgress = context.now }
        queue.append(bytes)
        queuedBytes += bytes.buffer.count
        onQueuedBytesChange?(bytes.buffer.count)
        if !writing {
            writing = true
            let this = ShardBound(self)
            context.spawn { await this.value.writeLoop() }
        }
        return true
    }

    private func writeLoop() async {
        while !queue.isEmpty && !closed {
            let batch = queue
            queue = []
            let total = batch.reduce(0) { $0 + $1.buffer.count }
            // One frame goes out from its own buffer; several are gathered into one (one send).
            let gathered: OutgoingBytes
            if batch.count == 1 {
                gathered = batch[0]
            } else {
                gathered = OutgoingBytes(count: total)
                var offset = 0
                for bytes in batch {
                    (gathered.buffer.baseAddress! + offset).copyMemory(from: bytes.buffer.baseAddress!,
                                                                       byteCount: bytes.buffer.count)
                    offset += bytes.buffer.count
                }
            }
            let sent: Bool
            do {
                try await connection.send(UnsafeRawBufferPointer(gathered.buffer))
                sent = true
            } catch {
                sent = false
            }
            queuedBytes -= total
            lastSendProgress = context.now
            onQueuedBytesChange?(-total)
            if !sent {
                writing = false
                await close()
                return
            }
        }
        writing = false
    }

    /// Waits until every queued frame is handed to the kernel (or the connection failed), at most `timeout`.
    public func flush(timeout: Duration = .seconds(1)) async {
        let deadline = context.now + timeout
        while writing && !closed && context.now < deadline {
            try? await context.sleep(for: .milliseconds(1))
        }
    }

    /// Reads frames until the peer closes, the connection fails or a frame is malformed; then closes. A malformed
    /// stream is handed to `onMalformed` first (it may wait, and queue last frames, which are flushed before the
    /// close). After every read, `afterRead` is told the bytes held for a frame not yet complete and whether a frame
    /// completed; answering false ends the connection as `.bufferLimit` (the server holds too much for its peers).
    public func readLoop(_ onFrame: (Frame) -> Void, onMalformed: (WireError) async -> Void = { _ in },
                         afterRead: ((_ buffered: Int, _ completed: Bool) -> Bool)? = nil) async {
        var decoder = FrameDecoder(limits: limits)
        // Small while the peer sends little (an idle connection holds 16 KiB), doubled up to `receiveBufferBytes`
        // while reads fill it.
        var buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: min(16 << 10, receiveBufferBytes), alignment: 8)
        defer { buffer.deallocate() }
        while !closed {
            let n: Int
            do {
                n = try await connection.receive(into: buffer)
            } catch {
                break
            }
            if n == 0 { break }
            defer {
                if n == buffer.count && buffer.count < receiveBufferBytes {
                    buffer.deallocate()
                    buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: min(2 * n, receiveBufferBytes), alignment: 8)
                }
            }
            var completed = false
            do {
                try decoder.decode(UnsafeRawBufferPointer(rebasing: buffer[..<n])) { frame in
                    completed = true
                    onFrame(frame)
                }
            } catch {
                _ = afterRead?(0, completed)
                await onMalformed(error)
                await flush()
                break
            }
            if let afterRead, !afterRead(decoder.bufferedBytes, completed) {
                _ = afterRead(0, false)
                await onMalformed(.bufferLimit(held: decoder.bufferedBytes))
                await flush()
                break
            }
        }
        await close()
    }

    public func close() async {
        guard !closed else { return }
        closed = true
        queue = []
        onQueuedBytesChange?(-queuedBytes)
        queuedBytes = 0
        try? await connection.close()
    }
}

@available(*, unavailable)
extension FrameConnection: Sendable {}

/// Bytes queued for sending, in memory that does not move until they are sent.
final class OutgoingBytes {
    let buffer: UnsafeMutableRawBufferPointer

    init(count: Int) {
        precondition(count > 0, "an empty frame")
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
    }

    deinit { buffer.deallocate() }
}
