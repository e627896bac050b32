import Foundation
import Logging
import Platform
import Raft
import Reactor
import SwiftProtobuf
import Transport
import Wire

/// An address of a member: where it listens for clients, and for its peers' Raft messages.
public struct MemberAddress: Sendable, Hashable, CustomStringConvertible {
    public var id: NodeID
    public var host: String
    /// The client port: placement driver operations.
    public var port: UInt16
    /// The peer port: RAFT_MESSAGE frames only.
    public var peerPort: UInt16

    public init(id: NodeID, host: String, port: UInt16, peerPort: UInt16? = nil) {
        self.id = id
        self.host = host
        self.port = port
        self.peerPort = peerPort ?? Self.defaultPeerPort(for: port) ?? 0
    }

    /// The peer port of "id=host:port" without one: the client port plus 10000.
    public static func defaultPeerPort(for port: UInt16) -> UInt16? {
        port <= UInt16.max - 10_000 ? port + 10_000 : nil
    }

    /// The client address.
    public var description: String { "\(host):\(port)" }
    public var peerAddress: String { "\(host):\(peerPort)" }
}

/// The network side of a placement driver member, on its shard: a client listener (the placement driver operations;
/// RAFT_MESSAGE refused), a peer listener (RAFT_MESSAGE only; every other operation refused), and one outgoing
/// connection per peer, reconnected with backoff. Raft messages to a peer that is down are dropped beyond a bound
/// (Raft retries). Both listeners follow the connection policy of `FrameServer`. Shard-bound.
public final class PDServer {
    public let member: PDMember
    public let members: [NodeID: MemberAddress]
    let context: ShardContext
    let listener: TCPListener
    let peerListener: TCPListener
    let logger: Logger
    private var links: [NodeID: PeerLink] = [:]
    private var clients: FrameServer?
    private var peers: FrameServer?
    private var stopped = false

    private init(member: PDMember, members: [NodeID: MemberAddress], context: ShardContext, listener: TCPListener,
                 peerListener: TCPListener) {
        self.member = member
        self.members = members
        self.context = context
        self.listener = listener
        self.peerListener = peerListener
        var logger = Logger(label: "elastic-stream.pd.server")
        logger[metadataKey: "member"] = "\(member.id)"
        self.logger = logger
    }

    /// Listens on this member's client and peer ports and connects the member to its peers.
    public static func start(member: PDMember, members: [NodeID: MemberAddress], on context: ShardContext,
                             limits: ConnectionLimits = ConnectionLimits()) throws(IOError) -> PDServer
    {
        guard let own = members[member.id] else {
            throw IOError(.listen, .invalidArgument("member \(member.id) has no address"))
        }
        guard own.peerPort != 0, own.peerPort != own.port else {
            throw IOError(.listen, .invalidArgument("member \(member.id) needs a peer port apart from its client port"))
        }
        let listener = try context.listen(host: own.host, port: own.port)
        let peerListener = try context.listen(host: own.host, port: own.peerPort)
        let server = PDServer(member: member, members: members, context: context, listener: listener,
                              peerListener: peerListener)
        for (id, address) in members where id != member.id {
            server.links[id] = PeerLink(address: address, context: context)
        }
        let bound = ShardBound(server)
        member.send = { message in bound.value.links[message.to]?.send(message) }
        let clients = FrameServer(listener: listener, context: context, limits: limits, frameLimits: .default,
                                  logger: server.logger) { frame in await bound.value.respond(to: frame) }
        // Peers send snapshots in frames up to 1 GiB; memory is still taken only as their bytes arrive.
        var peerLimits = limits
        peerLimits.maxBufferedBytes = max(limits.maxBufferedBytes, 2 * PeerLink.limits.maxFrameBytes)
        peerLimits.maxConnections = max(16, 4 * members.count)
        let peers = FrameServer(listener: peerListener, context: context, limits: peerLimits,
                                frameLimits: PeerLink.limits, logger: server.logger, inline: { frame in
            guard frame.operation == .raftMessage else { return false }
            if let message = frame.withPayload({ Raft.Message(decoding: $0) }) { bound.value.member.receive(message) }
            return true
        }) { frame in
            Frame(errorTo: frame, status: PDError(.unsupportedOperation,
                "the peer port takes only RAFT_MESSAGE; send placement driver operations to the client port").status)
        }
        server.clients = clients
        server.peers = peers
        clients.start()
        peers.start()
        return server
    }

    public var port: UInt16 { listener.port }

    public var peerPort: UInt16 { peerListener.port }

    /// The client and peer listeners' connections, requests in flight and bytes held, for diagnosis.
    public var diagnostics: String {
        func describe(_ server: FrameServer?) -> String {
            guard let server else { return "none" }
            return "connections \(server.connectionCount) in-flight \(server.inFlight) buffered \(server.bufferedBytes)"
        }
        return "clients: \(describe(clients)); peers: \(describe(peers))"
    }

    public func stop() async {
        stopped = true
        await clients?.stop(drainTimeout: .milliseconds(200))
        await peers?.stop(drainTimeout: .zero)
        for link in links.values { await link.stop() }
    }

    // MARK: - Operations

    private func now() -> Int64 { context.wallClockMilliseconds }

    private func failure(_ error: PDError, to frame: Frame) -> Frame {
        var status = error.status
        if error.code == .notLeader, let address = members[error.leader] { status.leaderAddress = address.description }
        return Frame(errorTo: frame, status: status)
    }

    /// Answers one client request.
    func respond(to frame: Frame) async -> Frame {
        guard let operation = frame.operation else {
            return failure(PDError(.unsupportedOperation, "operation 0x\(String(frame.rawOperation, radix: 16)) is unknown"), to: frame)
        }
        do {
            switch operation {
            case .raftMessage:
                return failure(PDError(.unsupportedOperation,
                    "RAFT_MESSAGE is taken only on a member's peer port, not its client port"), to: frame)
            case .ping:
                return try Frame(responseTo: frame, header: Elasticstream_V1_Status())
            case .createStream, .openStream, .updateStream, .trimStream, .deleteStream, .pdCreateRange, .pdSealRange,
                 .registerRangeServer, .rangeServerHeartbeat, .allocateID, .commitObject:
                // The payload of a write, when present, is the client's id and the call's sequence (16 bytes):
                // a retry of the same call is answered from the first one's result.
                let payload = Array(frame.payload)
                var client: UInt64 = 0
                var sequence: UInt64 = 0
                if payload.count == 16 {
                    client = payload[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                    sequence = payload[8..<16].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                }
                let command = PDCommand(operation: operation, now: now(), request: Array(frame.header),
                                        clientID: client, sequence: sequence)
                // Checked before it enters the log (and again when applied).
                try command.validate()
                let result = try await member.propose(command)
                return try response(to: frame, operation, result)
            case .describeStream:
                let request = try frame.header(as: Elasticstream_V1_DescribeStreamRequest.self)
                let stream = try await member.read { (state) throws(PDError) in try state.describeStream(request.streamID) }
                var response = Elasticstream_V1_DescribeStreamResponse()
                response.stream = stream
                return try Frame(responseTo: frame, header: response)
            case .listRanges:
                let request = try frame.header(as: Elasticstream_V1_ListRangesRequest.self)
                let limit = request.limit == 0 ? PDStateMachine.defaultRangePage
                    : Int(min(request.limit, UInt32(PDStateMachine.maxRangePage)))
                let page = try await member.read { (state) throws(PDError) -> ([RangeRecord], Bool) in
                    switch request.filter {
                    case .serverID(let id):
                        return state.listRanges(server: id, startStream: request.startStreamID,
                                                startIndex: request.startIndex, limit: limit)
                    case .streamID(let id):
                        return try state.listRanges(stream: id, startIndex: request.startIndex,
                                                    startOffset: request.startOffset, limit: limit)
                    case nil: throw PDError(.invalidArgument, "list ranges of a stream or of a server")
                    }
                }
                var response = Elasticstream_V1_ListRangesResponse()
                response.ranges = page.0
                response.more = page.1
                return try Frame(responseTo: frame, header: response)
            case .listStreams:
                let request = try frame.header(as: Elasticstream_V1_ListStreamsRequest.self)
                let limit = request.limit == 0 ? 1000 : Int(min(request.limit, 10_000))
                let streams = try await member.read { $0.listStreams(after: request.afterStreamID, limit: limit) }
                var response = Elasticstream_V1_ListStreamsResponse()
                response.streams = streams
                return try Frame(responseTo: frame, header: response)
            case .listRangeServers:
                let time = now()
                let servers = try await member.read { $0.listServers(now: time) }
                var response = Elasticstream_V1_ListRangeServersResponse()
                response.servers = servers
                return try Frame(responseTo: frame, header: response)
            case .listObjects:
                let request = try frame.header(as: Elasticstream_V1_ListObjectsRequest.self)
                let objects = try await member.read {
                    $0.listObjects(stream: request.streamID, from: request.startOffset, to: request.endOffset)
                }
                var response = Elasticstream_V1_ListObjectsResponse()
                response.objects = objects
                return try Frame(responseTo: frame, header: response)
            case .watch:
                let request = try frame.header(as: Elasticstream_V1_WatchRequest.self)
                let (events, revision) = try await member.read { (state) throws(PDError) in
                    (try state.events(after: request.afterRevision), state.revision)
                }
                var response = Elasticstream_V1_WatchResponse()
                let kinds = Set(request.kinds)
                response.events = events.filter { kinds.isEmpty || kinds.contains(Self.kind(of: $0)) }
                response.revision = revision
                return try Frame(responseTo: frame, header: response)
            case .describeCluster:
                let time = now()
                let servers = try await member.read { $0.listServers(now: time) }
                var response = Elasticstream_V1_DescribeClusterResponse()
                response.leaderID = member.leader
                response.members = members.keys.sorted().map { id in
                    var entry = Elasticstream_V1_PlacementDriverMember()
                    entry.memberID = id
                    entry.address = members[id]!.description
                    entry.leader = id == member.leader
                    return entry
                }
                response.servers = servers
                return try Frame(responseTo: frame, header: response)
            default:
                return failure(PDError(.unsupportedOperation, "a placement driver does not serve \(operation)"), to: frame)
            }
        } catch let error as PDError {
            return failure(error, to: frame)
        } catch {
            return failure(PDError(.badRequest, "\(error)"), to: frame)
        }
    }

    private static func kind(of event: WatchEvent) -> Elasticstream_V1_ResourceKind {
        switch event.resource {
        case .stream: .resourceStream
        case .range: .resourceRange
        case .rangeServer: .resourceRangeServer
        case .object: .resourceObject
        case nil: .unspecified
        }
    }

    private func response(to frame: Frame, _ operation: OperationCode, _ result: PDResult) throws -> Frame {
        if case .failed(let error) = result { return failure(error, to: frame) }
        switch (operation, result) {
        case (.createStream, .stream(let stream, _)):
            var response = Elasticstream_V1_CreateStreamResponse()
            response.stream = stream
            return try Frame(responseTo: frame, header: response)
        case (.openStream, .stream(let stream, let ranges)):
            var response = Elasticstream_V1_OpenStreamResponse()
            response.stream = stream
            response.ranges = ranges
            return try Frame(responseTo: frame, header: response)
        case (.updateStream, .stream(let stream, _)):
            var response = Elasticstream_V1_UpdateStreamResponse()
            response.stream = stream
            return try Frame(responseTo: frame, header: response)
        case (.trimStream, .stream(let stream, _)):
            var response = Elasticstream_V1_TrimStreamResponse()
            response.stream = stream
            return try Frame(responseTo: frame, header: response)
        case (.deleteStream, .stream(let stream, _)):
            var response = Elasticstream_V1_DeleteStreamResponse()
            response.stream = stream
            return try Frame(responseTo: frame, header: response)
        case (.pdCreateRange, .range(let range)):
            var response = Elasticstream_V1_CreateRangeResponse()
            response.range = range
            return try Frame(responseTo: frame, header: response)
        case (.pdSealRange, .range(let range)):
            var response = Elasticstream_V1_SealRangeResponse()
            response.range = range
            return try Frame(responseTo: frame, header: response)
        case (.registerRangeServer, .serverID(let id)):
            var response = Elasticstream_V1_RegisterRangeServerResponse()
            response.serverID = id
            return try Frame(responseTo: frame, header: response)
        case (.allocateID, .firstID(let first)):
            var response = Elasticstream_V1_AllocateIdResponse()
            response.firstID = first
            return try Frame(responseTo: frame, header: response)
        case (.rangeServerHeartbeat, _):
            return try Frame(responseTo: frame, header: Elasticstream_V1_RangeServerHeartbeatResponse())
        case (.commitObject, _):
            return try Frame(responseTo: frame, header: Elasticstream_V1_CommitObjectResponse())
        default:
            return failure(PDError(.unknown, "\(operation) answered \(result)"), to: frame)
        }
    }
}

@available(*, unavailable)
extension PDServer: Sendable {}

/// The outgoing connection to one peer: Raft messages queue (bounded, oldest dropped) while it connects.
final class PeerLink {
    let address: MemberAddress
    let context: ShardContext
    private var connection: FrameConnection?
    private var pending: [Raft.Message] = []
    private var connecting = false
    private var stopped = false
    static let maxPending = 4096
    /// Peer connections carry snapshots: frames up to 1 GiB.
    static let limits = FrameLimits(maxFrameBytes: 1 << 30, maxHeaderBytes: 1 << 20)

    init(address: MemberAddress, context: ShardContext) {
        self.address = address
        self.context = context
    }

    func send(_ message: Raft.Message) {
        guard !stopped else { return }
        if let connection, !connection.closed {
            // Queue full (or the frame too large): drop it; Raft sends again.
            _ = connection.send(Self.frame(message))
            return
        }
        pending.append(message)
        if pending.count > Self.maxPending { pending.removeFirst(pending.count - Self.maxPending) }
        connect()
    }

    static func frame(_ message: Raft.Message) -> Frame {
        Frame(operation: .raftMessage, requestID: 0, header: [], payload: message.encoded())
    }

    private func connect() {
        guard !connecting, !stopped else { return }
        connecting = true
        let link = ShardBound(self)
        context.spawn { await link.value.connectLoop() }
    }

    private func connectLoop() async {
        defer { connecting = false }
        var backoff = Duration.milliseconds(20)
        while !stopped {
            do {
                let tcp = try await context.connect(host: address.host, port: address.peerPort)
                let framed = FrameConnection(tcp, context: context, maxQueuedBytes: 1 << 30, limits: Self.limits)
                connection = framed
                let queued = pending
                pending = []
                for message in queued { framed.send(Self.frame(message)) }
                // Peers answer on their own connections; reading here only notices when this one closes.
                let bound = ShardBound(framed)
                context.spawn { await bound.value.readLoop { _ in } }
                return
            } catch {
                try? await context.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(1))
            }
        }
    }

    func stop() async {
        stopped = true
        pending = []
        await connection?.close()
    }
}

@available(*, unavailable)
extension PeerLink: Sendable {}
