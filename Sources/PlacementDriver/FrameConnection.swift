import Platform
import Reactor
import Wire

/// A TCP connection carrying frames, on one shard: a bounded queue of outgoing frames written by one writer task (so
/// frames never interleave), and a read loop that hands every decoded frame to a handler. Shard-bound.
final class FrameConnection {
    let connection: TCPConnection
    let context: ShardContext
    let maxQueuedBytes: Int
    let limits: FrameLimits
    private var queue: [[UInt8]] = []
    private var queuedBytes = 0
    private var writing = false
    private(set) var closed = false

    init(_ connection: TCPConnection, context: ShardContext, maxQueuedBytes: Int = 64 << 20,
         limits: FrameLimits = .default) {
        self.connection = connection
        self.context = context
        self.maxQueuedBytes = maxQueuedBytes
        self.limits = limits
    }

    /// Queues a frame; false when the connection is closed or its queue is full (the frame is dropped).
    @discardableResult
    func send(_ frame: Frame) -> Bool {
        guard !closed, let bytes = try? frame.encoded(limits: limits) else { return false }
        guard queuedBytes + bytes.count <= maxQueuedBytes else { return false }
        queue.append(bytes)
        queuedBytes += bytes.count
        if !writing {
            writing = true
            let this = ShardBound(self)
            context.spawn { await this.value.writeLoop() }
        }
        return true
    }

    private func writeLoop() async {
        defer { writing = false }
        while !queue.isEmpty && !closed {
            let batch = queue
            queue = []
            let total = batch.reduce(0) { $0 + $1.count }
            queuedBytes -= total
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: total, alignment: 8)
            defer { buffer.deallocate() }
            var offset = 0
            for bytes in batch {
                UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + bytes.count)]).copyBytes(from: bytes)
                offset += bytes.count
            }
            do {
                try await connection.send(UnsafeRawBufferPointer(buffer))
            } catch {
                await close()
                return
            }
        }
    }

    /// Reads frames until the peer closes, the connection fails or a frame is malformed; then closes.
    func readLoop(_ onFrame: (Frame) -> Void) async {
        var decoder = FrameDecoder(limits: limits)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 8)
        defer { buffer.deallocate() }
        while !closed {
            let n: Int
            do {
                n = try await connection.receive(into: buffer)
            } catch {
                break
            }
            if n == 0 { break }
            do {
                try decoder.decode(UnsafeRawBufferPointer(rebasing: buffer[..<n]), onFrame)
            } catch {
                break
            }
        }
        await close()
    }

    func close() async {
        guard !closed else { return }
        closed = true
        queue = []
        queuedBytes = 0
        try? await connection.close()
    }
}

@available(*, unavailable)
extension FrameConnection: Sendable {}
