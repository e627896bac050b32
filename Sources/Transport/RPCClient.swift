import Platform
import Reactor
import SwiftProtobuf
import Wire

/// Why a call got no answer, or got a refusal.
public enum CallError: Error, Sendable, Hashable, CustomStringConvertible {
    /// No connection could be made, or it closed before the answer came.
    case unreachable(address: String, detail: String)
    /// No answer within the call's timeout.
    case timedOut(address: String)
    /// The server answered with an error status.
    case refused(code: ErrorCode, message: String)
    /// The answer does not decode, or the request does not encode.
    case malformed(String)

    public var description: String {
        switch self {
        case .unreachable(let address, let detail): "\(address) is unreachable: \(detail)"
        case .timedOut(let address): "\(address) did not answer in time"
        case .refused(let code, let message): "\(code) (\(code.meaning)): \(message)"
        case .malformed(let detail): detail
        }
    }

    /// The server's error code, when it answered.
    public var code: ErrorCode? {
        if case .refused(let code, _) = self { return code }
        return nil
    }
}

/// Requests and their answers over one connection to one "host:port", multiplexed by request id, on one shard.
/// Frames go out in the order calls are made (also while the connection is being made), so a writer's appends to a
/// replica arrive in order. At most `maxOutstandingRequests` calls (and `maxOutstandingBytes`) are on the wire at
/// once, below a server's per-connection bounds; later calls wait here, in order. Every call has a deadline; one
/// sweeper (`Deadlines`) expires them (a call that expires before it was sent is never sent). When the connection closes,
/// every call sent on it fails as unreachable, and the next call connects again. Shard-bound.
public final class RPCClient {
    public let address: String
    public let context: ShardContext
    public let limits: FrameLimits
    public let maxQueuedBytes: Int
    public let maxOutstandingRequests: Int
    public let maxOutstandingBytes: Int
    public let connectTimeout: Duration
    private var connection: FrameConnection?
    private var generation = 0
    private var connecting = false
    /// Calls not sent yet, in call order: waiting for the connection or for room on it.
    private var queued: [(wire: [UInt8], id: UInt64)] = []
    private var queuedHead = 0
    private struct Call {
        let callback: (Result<Frame, CallError>) -> Void
        let bytes: Int
        /// The request's wire bytes, kept until it is answered: a call the server never took (past its GOAWAY's
        /// last request id) is sent again on the next connection. (Shared with the queue, not copied.)
        let wire: [UInt8]
        /// The connection it went out on (0: not sent yet).
        var generation: Int
    }
    private var pending: [UInt64: Call] = [:]
    private var outstanding = 0
    private var outstandingBytes = 0
    /// Calls of the current connection that timed out unanswered, with their bytes.
    private var ghosts: [UInt64: Int] = [:]
    private var nextRequestID: UInt64 = 1
    /// Every call's deadline (one sweeper for all of them).
    private lazy var deadlines = Deadlines<UInt64>(on: context) { [weak self] id in
        guard let self else { return }
        resolve(id, .failure(.timedOut(address: address)))
    }
    private var closedForGood = false
    /// Set when the server sent GOAWAY (it is draining, or closing an idle connection).
    public private(set) var goingAway = false
    /// Per connection that got a GOAWAY: the last request id the server said it would answer.
    private var lastAnswered: [Int: UInt64] = [:]

    public init(address: String, on context: ShardContext, limits: FrameLimits = .default,
                maxQueuedBytes: Int = 64 << 20, maxOutstandingRequests: Int = 512, maxOutstandingBytes: Int = 32 << 20,
                connectTimeout: Duration = .seconds(3)) {
        self.address = address
        self.context = context
        self.limits = limits
        self.maxQueuedBytes = maxQueuedBytes
        self.maxOutstandingRequests = maxOutstandingRequests
        self.maxOutstandingBytes = maxOutstandingBytes
        self.connectTimeout = connectTimeout
    }

    /// Sends one request and waits for its answer (a frame with the error flag comes back as `.refused`).
    public func call(_ operation: OperationCode, header: some SwiftProtobuf.Message, payload: [UInt8] = [],
                     timeout: Duration) async -> Result<Frame, CallError>
    {
        let bytes: [UInt8]
        do {
            bytes = try header.serializedBytes()
        } catch {
            return .failure(.malformed("the request does not encode: \(error)"))
        }
        return await call(operation, headerBytes: bytes, payload: payload, timeout: timeout)
    }

    /// With `errorFrames`, an answer with the error flag comes back as `.success` too (the caller reads its whole
    /// `Status`, a NOT_LEADER's leader address included).
    public func call(_ operation: OperationCode, headerBytes: [UInt8], payload: [UInt8], timeout: Duration,
                     errorFrames: Bool = false) async -> Result<Frame, CallError>
    {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<Frame, CallError>, Never>) in
            send(operation, headerBytes: headerBytes, payload: payload, timeout: timeout, errorFrames: errorFrames) {
                continuation.resume(returning: $0)
            }
        }
    }

    /// Sends one request; `completion` runs on this shard with the answer (an error frame as `.refused`), a timeout
    /// or a connection failure, exactly once. No task is made per call: the writer's hot path uses this.
    public func send(_ operation: OperationCode, headerBytes: [UInt8], payload: [UInt8], timeout: Duration,
                     errorFrames: Bool = false, completion: @escaping (Result<Frame, CallError>) -> Void)
    {
        let wire: [UInt8]
        do {
            wire = try payload.withUnsafeBytes { raw in
                try Frame.encodeRequest(operation: operation, requestID: 0, header: headerBytes, payload: raw,
                                        limits: limits)
            }
        } catch {
            completion(.failure(.malformed("the request does not encode: \(error)")))
            return
        }
        send(wire: wire, timeout: timeout, errorFrames: errorFrames, completion: completion)
    }

    /// Sends a request already encoded (`Frame.encodeRequest`, any request id): several servers can be sent the same
    /// bytes, each copy getting its own request id. Completion as for `send`.
    public func send(wire: [UInt8], timeout: Duration, errorFrames: Bool = false,
                     completion: @escaping (Result<Frame, CallError>) -> Void) {
        guard !closedForGood else {
            completion(.failure(.unreachable(address: address, detail: "the client is closed")))
            return
        }
        let id = nextRequestID
        nextRequestID += 1
        pending[id] = Call(callback: { result in
            switch result {
            case .success(let answer) where answer.flags.contains(.error) && !errorFrames:
                let status = (try? answer.header(as: Status.self)) ?? Status()
                completion(.failure(.refused(code: status.code, message: status.message)))
            default:
                completion(result)
            }
        }, bytes: wire.count, wire: wire, generation: 0)
        deadlines.set(id, context.now + timeout)
        queued.append((wire, id))
        if connection == nil || connection!.closed {
            connect()
        } else {
            pump()
        }
    }

    /// Sends queued calls while the connection has room, in order.
    private func pump() {
        guard let connection, !connection.closed else { return }
        while queuedHead < queued.count {
            let (wire, id) = queued[queuedHead]
            guard var call = pending[id] else {
                // Expired before it was sent.
                queuedHead += 1
                continue
            }
            guard outstanding < maxOutstandingRequests,
                  outstanding == 0 || outstandingBytes + wire.count <= maxOutstandingBytes
            else { break }
            queued[queuedHead] = ([], id)
            queuedHead += 1
            call.generation = generation
            pending[id] = call
            outstanding += 1
            outstandingBytes += wire.count
            if !connection.send(wire: wire, requestID: id) {
                // A dropped frame would let later ones overtake it: the connection is given up instead, and every
                // call sent on it fails.
                let failed = connection
                let bound = ShardBound(failed)
                context.spawn { await bound.value.close() }
                resolve(id, .failure(.unreachable(address: address, detail: "the send queue is full or closed")))
                return
            }
        }
        if queuedHead == queued.count {
            queued.removeAll(keepingCapacity: true)
            queuedHead = 0
        } else if queuedHead > 1024 && queuedHead * 2 > queued.count {
            queued.removeFirst(queuedHead)
            queuedHead = 0
        }
    }

    public func close() async {
        closedForGood = true
        let connection = connection
        self.connection = nil
        await connection?.close()
        fail(.unreachable(address: address, detail: "the client closed"))
    }

    private func connect() {
        guard !connecting, !closedForGood else { return }
        connecting = true
        let client = ShardBound(self)
        context.spawn { await client.value.connectNow() }
    }

    private func connectNow() async {
        defer { connecting = false }
        let parts = address.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1]) else {
            connecting = false
            failQueued(.unreachable(address: address, detail: "not host:port"))
            return
        }
        let tcp: TCPConnection
        do {
            let shard = context.shard
            let host = String(parts[0])
            tcp = try await context.withTimeout(connectTimeout, operation: .connect) {
                ShardBound(try await ShardContext(shard: shard).connect(host: host, port: port))
            }.value
        } catch {
            // A call made from a failure callback then connects again.
            connecting = false
            failQueued(.unreachable(address: address, detail: "\(error)"))
            return
        }
        if closedForGood {
            try? await tcp.close()
            return
        }
        let framed = FrameConnection(tcp, context: context, maxQueuedBytes: maxQueuedBytes, limits: limits)
        generation += 1
        let current = generation
        connection = framed
        goingAway = false
        outstanding = 0
        outstandingBytes = 0
        ghosts = [:]
        let bound = ShardBound((self, framed))
        context.spawn {
            await bound.value.1.readLoop { frame in
                if frame.operation == .goAway && !frame.isResponse {
                    let last = (try? frame.header(as: Elasticstream_V1_GoAway.self))?.lastRequestID ?? 0
                    bound.value.0.goAway(bound.value.1, generation: current, lastRequestID: last)
                    return
                }
                bound.value.0.resolve(frame.requestID, .success(frame))
            }
            bound.value.0.ended(bound.value.1, generation: current)
        }
        pump()
    }

    /// The server will close the connection after answering requests up to `lastRequestID`: new calls wait for the
    /// next connection, and calls past that id are sent again on it when this one closes.
    private func goAway(_ framed: FrameConnection, generation: Int, lastRequestID: UInt64) {
        goingAway = true
        lastAnswered[generation] = lastRequestID
        guard connection === framed else { return }
        connection = nil
        outstanding = 0
        outstandingBytes = 0
        ghosts = [:]
    }

    /// The connection of `generation` closed: every call sent on it fails, except those its server said in a GOAWAY
    /// it never took, which are sent again first on the next connection, in their order; calls still queued wait for
    /// the next one too.
    private func ended(_ framed: FrameConnection, generation ended: Int) {
        var lost: [UInt64] = []
        var again: [UInt64] = []
        let untaken = lastAnswered.removeValue(forKey: ended)
        for (id, call) in pending where call.generation == ended {
            if let untaken, id > untaken { again.append(id) } else { lost.append(id) }
        }
        for id in lost { resolve(id, .failure(.unreachable(address: address, detail: "the connection closed"))) }
        if !again.isEmpty {
            again.sort()
            for id in again { pending[id]?.generation = 0 }
            let rest = Array(queued[queuedHead...])
            queued = again.map { (pending[$0]!.wire, $0) } + rest
            queuedHead = 0
        }
        guard connection === framed else {
            if !again.isEmpty {
                if connection == nil || connection!.closed { connect() } else { pump() }
            }
            return
        }
        connection = nil
        outstanding = 0
        outstandingBytes = 0
        ghosts = [:]
        if queuedHead < queued.count { connect() }
    }

    private func failQueued(_ error: CallError) {
        let calls = queued[queuedHead...]
        queued = []
        queuedHead = 0
        for call in calls { resolve(call.id, .failure(error)) }
    }

    private func resolve(_ id: UInt64, _ result: Result<Frame, CallError>) {
        deadlines.remove(id)
        guard let call = pending.removeValue(forKey: id) else {
            // A late answer to a call that timed out: its slot on the wire is free now.
            if let bytes = ghosts.removeValue(forKey: id) {
                outstanding -= 1
                outstandingBytes -= bytes
                if queuedHead < queued.count { pump() }
            }
            return
        }
        if call.generation != 0 && call.generation == generation {
            if case .failure(.timedOut) = result {
                // Still on the wire (or at the server): it keeps its slot until answered or the connection ends.
                ghosts[id] = call.bytes
            } else {
                outstanding -= 1
                outstandingBytes -= call.bytes
            }
        }
        call.callback(result)
        if call.generation != 0 && queuedHead < queued.count { pump() }
    }

    private func fail(_ error: CallError) {
        let waiting = pending
        pending = [:]
        deadlines.removeAll()
        queued = []
        queuedHead = 0
        outstanding = 0
        outstandingBytes = 0
        ghosts = [:]
        for (_, call) in waiting { call.callback(.failure(error)) }
    }
}

@available(*, unavailable)
extension RPCClient: Sendable {}
