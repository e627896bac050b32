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
/// Frames go out in the order `call` is made (also while the connection is being made), so a writer's appends to a
/// replica arrive in order. Every call has a deadline; one sweeper task expires them. When the connection closes,
/// every waiting call fails as unreachable, and the next call connects again. Shard-bound.
public final class RPCClient {
    public let address: String
    public let context: ShardContext
    public let limits: FrameLimits
    public let maxQueuedBytes: Int
    private var connection: FrameConnection?
    private var connecting = false
    /// Wire bytes of calls made while connecting, in call order, with their request ids.
    private var unsent: [(wire: [UInt8], id: UInt64)] = []
    private var pending: [UInt64: (callback: (Result<Frame, CallError>) -> Void, deadline: Instant)] = [:]
    private var nextRequestID: UInt64 = 1
    private var sweeping = false
    private var closedForGood = false
    /// Set when the server sent GOAWAY (it is draining): callers should move elsewhere.
    public private(set) var goingAway = false

    public init(address: String, on context: ShardContext, limits: FrameLimits = .default,
                maxQueuedBytes: Int = 64 << 20) {
        self.address = address
        self.context = context
        self.limits = limits
        self.maxQueuedBytes = maxQueuedBytes
    }

    /// Calls in flight.
    public var inFlight: Int { pending.count }
    /// Bytes queued and not yet handed to the kernel.
    public var queuedBytes: Int { connection?.queuedBytes ?? 0 }

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

    public func call(_ operation: OperationCode, headerBytes: [UInt8], payload: [UInt8], timeout: Duration) async
        -> Result<Frame, CallError>
    {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<Frame, CallError>, Never>) in
            send(operation, headerBytes: headerBytes, payload: payload, timeout: timeout) { continuation.resume(returning: $0) }
        }
    }

    /// Sends one request; `completion` runs on this shard with the answer (an error frame as `.refused`), a timeout
    /// or a connection failure, exactly once. No task is made per call: the writer's hot path uses this.
    public func send(_ operation: OperationCode, headerBytes: [UInt8], payload: [UInt8], timeout: Duration,
                     completion: @escaping (Result<Frame, CallError>) -> Void)
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
        send(wire: wire, timeout: timeout, completion: completion)
    }

    /// Sends a request already encoded (`Frame.encodeRequest`, any request id): several servers can be sent the same
    /// bytes, each copy getting its own request id. Completion as for `send`.
    public func send(wire: [UInt8], timeout: Duration, completion: @escaping (Result<Frame, CallError>) -> Void) {
        guard !closedForGood else {
            completion(.failure(.unreachable(address: address, detail: "the client is closed")))
            return
        }
        let id = nextRequestID
        nextRequestID += 1
        pending[id] = ({ result in
            switch result {
            case .success(let answer) where answer.flags.contains(.error):
                let status = (try? answer.header(as: Status.self)) ?? Status()
                completion(.failure(.refused(code: status.code, message: status.message)))
            default:
                completion(result)
            }
        }, context.now + timeout)
        startSweeping()
        if let connection, !connection.closed {
            if !connection.send(wire: wire, requestID: id) {
                resolve(id, .failure(.unreachable(address: address, detail: "the send queue is full or closed")))
            }
        } else {
            unsent.append((wire, id))
            connect()
        }
    }

    /// Decodes an answer's header.
    public static func decode<M: SwiftProtobuf.Message>(_ frame: Frame, as _: M.Type) -> Result<M, CallError> {
        do {
            return .success(try frame.header(as: M.self))
        } catch {
            return .failure(.malformed("the answer does not decode: \(error)"))
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
        guard !connecting else { return }
        connecting = true
        let client = ShardBound(self)
        context.spawn { await client.value.connectNow() }
    }

    private func connectNow() async {
        defer { connecting = false }
        let parts = address.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1]) else {
            failUnsent(.unreachable(address: address, detail: "not host:port"))
            return
        }
        let tcp: TCPConnection
        do {
            tcp = try await context.connect(host: String(parts[0]), port: port)
        } catch {
            failUnsent(.unreachable(address: address, detail: "\(error)"))
            return
        }
        if closedForGood {
            try? await tcp.close()
            return
        }
        let framed = FrameConnection(tcp, context: context, maxQueuedBytes: maxQueuedBytes, limits: limits)
        connection = framed
        goingAway = false
        let queued = unsent
        unsent = []
        for (wire, id) in queued where !framed.send(wire: wire, requestID: id) {
            resolve(id, .failure(.unreachable(address: address, detail: "the send queue is full")))
        }
        let bound = ShardBound((self, framed))
        context.spawn {
            await bound.value.1.readLoop { frame in
                if frame.operation == .goAway && !frame.isResponse {
                    bound.value.0.goingAway = true
                    return
                }
                bound.value.0.resolve(frame.requestID, .success(frame))
            }
            bound.value.0.ended(bound.value.1)
        }
    }

    private func ended(_ framed: FrameConnection) {
        guard connection === framed else { return }
        connection = nil
        // Calls sent on it get no answer now; calls queued since wait for the next connection.
        let unsentIDs = Set(unsent.map(\.id))
        for id in pending.keys where !unsentIDs.contains(id) {
            resolve(id, .failure(.unreachable(address: address, detail: "the connection closed")))
        }
        if !unsent.isEmpty { connect() }
    }

    private func failUnsent(_ error: CallError) {
        let calls = unsent
        unsent = []
        for call in calls { resolve(call.id, .failure(error)) }
    }

    private func startSweeping() {
        guard !sweeping else { return }
        sweeping = true
        let client = ShardBound(self)
        context.spawn {
            let this = client.value
            while !this.pending.isEmpty {
                try? await this.context.sleep(for: .milliseconds(10))
                let now = this.context.now
                var expired: [UInt64] = []
                for (id, entry) in this.pending where entry.deadline <= now { expired.append(id) }
                for id in expired { this.resolve(id, .failure(.timedOut(address: this.address))) }
            }
            this.sweeping = false
        }
    }

    private func resolve(_ id: UInt64, _ result: Result<Frame, CallError>) {
        pending.removeValue(forKey: id)?.callback(result)
    }

    private func fail(_ error: CallError) {
        let waiting = pending
        pending = [:]
        unsent = []
        for (_, entry) in waiting { entry.callback(.failure(error)) }
    }
}

@available(*, unavailable)
extension RPCClient: Sendable {}
