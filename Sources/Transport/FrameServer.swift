import Logging
import Platform
import Reactor
import SwiftProtobuf
import Wire

/// How a server protects itself from the connections it accepts (docs/protocol.md, "Connections"). Bounds are per
/// listener on each shard.
public struct ConnectionLimits: Sendable, Hashable {
    /// Connections open at once; one more is answered with TOO_MANY_REQUESTS and GOAWAY, then closed.
    public var maxConnections = 4_096
    /// Bytes held for all connections together: frames still arriving, requests being served and answers waiting to
    /// be sent. A request past it is refused with TOO_MANY_REQUESTS; a connection whose unfinished frame would pass
    /// it is closed. A connection whose answers wait longer than `frameTimeout` without the peer reading any, or
    /// more than `maxBytesPerConnection` of them, is closed.
    public var maxBufferedBytes = 256 << 20
    /// Requests being served on one connection at once, and their bytes (past either: TOO_MANY_REQUESTS).
    public var maxRequestsPerConnection = 1_024
    public var maxBytesPerConnection = 64 << 20
    /// A connection with nothing in flight that sends no frame for this long is closed (after a GOAWAY).
    public var idleTimeout: Duration = .seconds(300)
    /// A frame begun must be complete within this (slow senders are closed, after an error frame and a GOAWAY).
    public var frameTimeout: Duration = .seconds(30)
    /// How long a connection closed for a protocol error waits for its requests in flight to be answered.
    public var answerTimeout: Duration = .seconds(5)

    public init() {}
}

/// The accept loop and per-connection policy of every server (range server shards, placement driver client and peer
/// ports), on one shard: bounded connections and bytes, idle and slow connections closed, malformed streams answered
/// with an error frame (operation 0) and a GOAWAY before the close, requests that carry the response flag refused.
/// Each request is answered by `respond` in its own task; `inline` may take a frame first (a Raft message) and answer
/// nothing. Shard-bound.
public final class FrameServer {
    public let listener: TCPListener
    public let context: ShardContext
    public let limits: ConnectionLimits
    public let frameLimits: FrameLimits
    let receiveBufferBytes: Int
    let logger: Logger
    private let respond: (Frame) async -> Frame
    private let inline: (Frame) -> Bool
    private let cost: (Frame) -> Int
    private var served: [ObjectIdentifier: Served] = [:]
    private var accepting = true
    /// Set by `stop`: new requests are refused with SHUTTING_DOWN.
    public private(set) var draining = false
    private var acceptTask: Task<Void, Error>?
    private var sweeping = false
    /// Bytes held across connections: frames arriving, requests being served, and answers waiting to be sent.
    public private(set) var bufferedBytes = 0
    /// Requests being served on every connection.
    public private(set) var inFlight = 0
    /// Connections refused (over `maxConnections`) and closed for being idle or slow, since the start.
    public private(set) var refusedConnections = 0
    public private(set) var timedOutConnections = 0

    final class Served {
        let connection: FrameConnection
        var requests = 0
        var bytes = 0
        /// Bytes of the frame still arriving, as charged to the server.
        var partial = 0
        var lastFrame: Instant
        /// When the oldest unfinished frame began arriving (nil: none).
        var partialSince: Instant?
        var highestRequestID: UInt64 = 0
        var closing = false

        init(_ connection: FrameConnection, now: Instant) {
            self.connection = connection
            lastFrame = now
        }
    }

    public init(listener: TCPListener, context: ShardContext, limits: ConnectionLimits, frameLimits: FrameLimits,
                receiveBufferBytes: Int = 64 << 10, logger: Logger,
                cost: @escaping (Frame) -> Int = { $0.encodedSize },
                inline: @escaping (Frame) -> Bool = { _ in false }, respond: @escaping (Frame) async -> Frame) {
        self.cost = cost
        self.listener = listener
        self.context = context
        self.limits = limits
        self.frameLimits = frameLimits
        self.receiveBufferBytes = receiveBufferBytes
        self.logger = logger
        self.inline = inline
        self.respond = respond
    }

    public var connectionCount: Int { served.count }

    /// Bytes every request being served counts for besides its own: its task and continuation.
    public static let requestOverhead = 4_096

    public func start() {
        let bound = ShardBound(self)
        acceptTask = context.spawn { await bound.value.acceptLoop() }
    }

    private func acceptLoop() async {
        while accepting {
            let connection: TCPConnection
            do {
                connection = try await listener.accept()
            } catch {
                if !accepting { return }
                try? await context.sleep(for: .milliseconds(10))
                continue
            }
            guard accepting else {
                try? await connection.close()
                return
            }
            let framed = FrameConnection(connection, context: context, limits: frameLimits,
                                         receiveBufferBytes: receiveBufferBytes)
            let bound = ShardBound((self, framed))
            if served.count >= limits.maxConnections {
                refusedConnections += 1
                context.spawn {
                    let (server, framed) = bound.value
                    await server.refuse(framed, .tooManyRequests,
                                        "over \(server.limits.maxConnections) connections; try again later",
                                        reason: .goAwayIdle)
                }
                continue
            }
            served[ObjectIdentifier(framed)] = Served(framed, now: context.now)
            // Answers waiting to be sent count against the byte bound too: a client that does not read its answers
            // cannot make the server hold more than the bound.
            framed.onQueuedBytesChange = { delta in bound.value.0.bufferedBytes += delta }
            startSweeping()
            context.spawn { await bound.value.0.serve(bound.value.1) }
        }
    }

    static func status(_ code: ErrorCode, _ message: String) -> Status {
        var status = Status()
        status.code = code
        status.message = message
        return status
    }

    /// An error frame of operation 0 (about the connection, not a request), then a GOAWAY; then the close.
    private func refuse(_ connection: FrameConnection, _ code: ErrorCode, _ message: String, requestID: UInt64 = 0,
                        lastRequestID: UInt64 = 0, reason: Elasticstream_V1_GoAwayReason) async {
        sendGoAway(connection, code, message, requestID: requestID, lastRequestID: lastRequestID, reason: reason)
        await connection.flush()
        await connection.close()
    }

    private func sendGoAway(_ connection: FrameConnection, _ code: ErrorCode, _ message: String, requestID: UInt64,
                            lastRequestID: UInt64, reason: Elasticstream_V1_GoAwayReason) {
        let status = Self.status(code, message)
        connection.send(Frame(rawOperation: 0, flags: [.response, .endOfStream, .error], requestID: requestID,
                              header: (try? status.serializedBytes()) ?? [], payload: []))
        var goAway = Elasticstream_V1_GoAway()
        goAway.reason = reason
        goAway.lastRequestID = lastRequestID
        if let frame = try? Frame(request: .goAway, id: 0, header: goAway) { connection.send(frame) }
    }

    private func serve(_ connection: FrameConnection) async {
        guard let state = served[ObjectIdentifier(connection)] else { return }
        let bound = ShardBound((self, state))
        await connection.readLoop({ frame in
            let (server, state) = bound.value
            server.receive(frame, on: state)
        }, onMalformed: { error in
            let (server, state) = bound.value
            await server.malformed(error, on: state)
        }, afterRead: { buffered, completed in
            let (server, state) = bound.value
            return server.account(buffered, completed: completed, on: state)
        })
        bufferedBytes -= state.partial
        state.partial = 0
        served[ObjectIdentifier(connection)] = nil
    }

    /// Charges the bytes of a frame still arriving; false when the server holds too much to take them.
    private func account(_ buffered: Int, completed: Bool, on state: Served) -> Bool {
        let now = context.now
        if completed { state.lastFrame = now }
        if buffered == 0 {
            state.partialSince = nil
        } else if state.partialSince == nil || completed {
            state.partialSince = now
        }
        bufferedBytes += buffered - state.partial
        state.partial = buffered
        return buffered == 0 || bufferedBytes <= limits.maxBufferedBytes
    }

    private func receive(_ frame: Frame, on state: Served) {
        // Past its GOAWAY a connection takes nothing: the client sends again what came after the last request id.
        guard !state.closing else { return }
        let connection = state.connection
        state.highestRequestID = max(state.highestRequestID, frame.requestID)
        if frame.isResponse {
            connection.send(Frame(errorTo: frame, status: Self.status(.badRequest,
                "a request must not carry the response flag (0x\(String(FrameFlags.response.rawValue, radix: 16)))")))
            return
        }
        if frame.operation == .goAway { return }
        if connection.queuedBytes > limits.maxBytesPerConnection {
            // The peer sends but does not read: nothing more is taken from it.
            closeDeaf(state)
            return
        }
        if inline(frame) { return }
        if draining {
            connection.send(Frame(errorTo: frame, status: Self.status(.shuttingDown, "the server is stopping")))
            return
        }
        // What serving it may hold: the request, for a request with a large answer (FETCH) that answer, and the
        // task that serves it (so that many tiny requests waiting cannot hold unbounded memory either).
        let size = max(frame.encodedSize, cost(frame)) + Self.requestOverhead
        guard state.requests < limits.maxRequestsPerConnection, state.bytes + size <= limits.maxBytesPerConnection
        else {
            connection.send(Frame(errorTo: frame, status: Self.status(.tooManyRequests,
                "over \(limits.maxRequestsPerConnection) requests or \(limits.maxBytesPerConnection) bytes in flight on this connection")))
            return
        }
        guard bufferedBytes + size <= limits.maxBufferedBytes else {
            connection.send(Frame(errorTo: frame, status: Self.status(.tooManyRequests,
                "the server holds over \(limits.maxBufferedBytes) bytes of requests; try again later")))
            return
        }
        state.requests += 1
        state.bytes += size
        bufferedBytes += size
        inFlight += 1
        let bound = ShardBound((self, state))
        context.spawn {
            let (server, state) = bound.value
            let response = await server.respond(frame)
            let connection = state.connection
            if !connection.send(response) && !connection.closed {
                // An answer that cannot be queued (over the frame limit, or the peer reads too slowly): the client
                // would wait for nothing, so the connection is closed and its calls fail at once.
                server.logger.warning("an answer could not be sent; closing the connection",
                                      metadata: ["peer": "\(connection.peer)", "bytes": "\(response.encodedSize)"])
                await connection.close()
            }
            state.requests -= 1
            state.bytes -= size
            server.bufferedBytes -= size
            server.inFlight -= 1
        }
    }

    /// The stream cannot be delimited any more: the requests already taken are answered (within `answerTimeout`),
    /// then an error frame and a GOAWAY go out, and the read loop closes the connection.
    private func malformed(_ error: WireError, on state: Served) async {
        state.closing = true
        let deadline = context.now + limits.answerTimeout
        while state.requests > 0 && !state.connection.closed && context.now < deadline {
            try? await context.sleep(for: .milliseconds(1))
        }
        var requestID: UInt64 = 0
        var code = ErrorCode.badRequest
        switch error {
        case .checksumMismatch(let id, _, _):
            requestID = id
            code = .checksumMismatch
        case .bufferLimit: code = .tooManyRequests
        default: break
        }
        sendGoAway(state.connection, code, "malformed frame: \(error); closing the connection", requestID: requestID,
                   lastRequestID: state.highestRequestID,
                   reason: code == .tooManyRequests ? .goAwayIdle : .goAwayProtocolError)
    }

    /// One sweeper per server while it has connections: closes the idle and the slow.
    private func startSweeping() {
        guard !sweeping else { return }
        sweeping = true
        let period = min(max(min(limits.idleTimeout, limits.frameTimeout) / 4, .milliseconds(50)), .seconds(1))
        let bound = ShardBound(self)
        context.spawn {
            let server = bound.value
            while !server.served.isEmpty && server.accepting {
                try? await server.context.sleep(for: period)
                server.sweep()
            }
            server.sweeping = false
        }
    }

    private func sweep() {
        let now = context.now
        for state in served.values where !state.closing {
            if state.connection.queuedBytes > 0, now - state.connection.lastSendProgress > limits.frameTimeout {
                // Answers wait and the peer reads none of them.
                closeDeaf(state)
                continue
            }
            let message: String
            if let since = state.partialSince, now - since > limits.frameTimeout {
                message = "a frame took longer than \(limits.frameTimeout) to arrive; closing the connection"
            } else if state.requests == 0, state.partialSince == nil, now - state.lastFrame > limits.idleTimeout {
                message = "idle for \(limits.idleTimeout); closing the connection"
            } else {
                continue
            }
            state.closing = true
            timedOutConnections += 1
            let bound = ShardBound((self, state))
            context.spawn {
                let (server, state) = bound.value
                await server.refuse(state.connection, .timeout, message, lastRequestID: state.highestRequestID,
                                    reason: .goAwayIdle)
            }
        }
    }

    /// Closes a connection whose peer reads none of its answers, at once: nothing more can be sent to it, so no
    /// error frame or GOAWAY either.
    private func closeDeaf(_ state: Served) {
        state.closing = true
        timedOutConnections += 1
        let bound = ShardBound(state.connection)
        context.spawn { await bound.value.close() }
    }

    /// Stops accepting, tells every connection to go away, waits for the requests in flight (at most
    /// `drainTimeout`), then closes every connection.
    public func stop(drainTimeout: Duration) async {
        accepting = false
        draining = true
        try? await listener.close()
        acceptTask?.cancel()
        var goAway = Elasticstream_V1_GoAway()
        goAway.reason = .goAwayShutdown
        for state in served.values {
            goAway.lastRequestID = state.highestRequestID
            if let frame = try? Frame(request: .goAway, id: 0, header: goAway) { state.connection.send(frame) }
        }
        let deadline = context.now + drainTimeout
        while inFlight > 0 && context.now < deadline { try? await context.sleep(for: .milliseconds(5)) }
        let states = Array(served.values)
        for state in states {
            await state.connection.flush()
            await state.connection.close()
        }
        served = [:]
    }
}

@available(*, unavailable)
extension FrameServer: Sendable {}
