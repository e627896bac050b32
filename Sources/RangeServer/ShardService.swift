import Logging
import Platform
import Reactor
import Records
import Store
import SwiftProtobuf
import Transport
import Wire

/// The range server on one shard: its store, its listener (under `FrameServer`'s connection policy), routing to the
/// owner shard, and stop. The requests are served in `ShardService+Writes.swift` (APPEND, CREATE_RANGE, SEAL_RANGE),
/// `ShardService+Reads.swift` (FETCH and its waiting readers, DESCRIBE_RANGE) and `ShardService+Repair.swift`
/// (reconciliation, writer leases, repair from peers). Shard-bound: made on its shard, used there.
final class ShardService {
    let index: Int
    let context: ShardContext
    let store: ShardStore
    let listener: TCPListener
    let configuration: RangeServerConfiguration
    let logger: Logger
    /// Set once the server knows its id (it serves before that; repairs need it to skip themselves).
    var serverID: UInt64 = 0
    /// Routes a request to the shard that owns its range (set by `RangeServer`).
    var forward: ((Int, Frame) async -> Frame)?
    var shardCount = 1
    /// The accept loop and connection policy (bounds, timeouts, protocol errors).
    var frameServer: FrameServer?
    var accepting = true
    /// FETCH requests waiting for records, per range.
    var waiters: [RangeKey: [UInt64]] = [:]
    var waiting: [UInt64: (continuation: UnsafeContinuation<Void, Never>, key: RangeKey)] = [:]
    var nextWaiter: UInt64 = 1
    /// When each waiting reader gives up (one sweeper for all of them).
    lazy var readerDeadlines = Deadlines<UInt64>(on: context) { [weak self] id in self?.expireWaiter(id) }
    /// Ranges being repaired from peers.
    var repairing: Set<RangeKey> = []
    var activeRepairs = 0
    var queuedRepairs: [(RangeKey, UInt64, [Elasticstream_V1_RangeServer])] = []
    var peers: [String: RPCClient] = [:]
    /// Appended bytes since the last heartbeat (the load the server reports).
    var appendedBytes: UInt64 = 0
    /// When the writer of each open range was last heard (an APPEND, with or without records): a range whose
    /// writer is silent past `writer_lease` is sealed by the server (`WriterLeases`). In memory: a restart gives
    /// every writer a whole lease again.
    var lastHeard: [RangeKey: Instant] = [:]
    /// Epochs that fenced ranges here (on disk).
    let fences: FenceTable

    init(index: Int, context: ShardContext, store: ShardStore, listener: TCPListener,
         configuration: RangeServerConfiguration, fences: FenceTable) {
        self.index = index
        self.context = context
        self.store = store
        self.listener = listener
        self.configuration = configuration
        self.fences = fences
        var logger = Logger(label: "elastic-stream.range-server")
        logger[metadataKey: "shard"] = "\(index)"
        self.logger = logger
    }

    var limits: FrameLimits { FrameLimits(maxFrameBytes: configuration.maxFrameBytes, maxHeaderBytes: 1 << 20) }

    func start() {
        // Every open replica's writer gets a whole lease from now (when it was last heard before a restart is not
        // known).
        let now = context.now
        for key in store.rangeKeys where store.describe(key)?.isSealed == false { lastHeard[key] = now }
        let bound = ShardBound(self)
        let maxAnswer = configuration.maxFrameBytes
        let server = FrameServer(listener: listener, context: context, limits: configuration.connectionLimits,
                                 frameLimits: limits, receiveBufferBytes: 256 << 10, logger: logger, cost: { frame in
            // A FETCH's answer may be up to its max_bytes: counted against the bounds before it is served.
            guard frame.operation == .fetch,
                  let request = try? frame.header(as: Elasticstream_V1_FetchRequest.self) else { return frame.encodedSize }
            return frame.encodedSize + min(max(Int(request.maxBytes), 1), maxAnswer)
        }) { frame in
            await bound.value.route(frame)
        }
        frameServer = server
        server.start()
    }

    /// Requests being served, on every connection of this shard.
    var inFlight: Int { frameServer?.inFlight ?? 0 }

    static func status(_ code: ErrorCode, _ message: String) -> Status {
        var status = Status()
        status.code = code
        status.message = message
        return status
    }

    // MARK: - Routing

    /// The shard that owns the range a request names (nil: any shard may answer).
    func owner(of frame: Frame) -> Int? {
        guard shardCount > 1, let operation = frame.operation else { return nil }
        let key: (UInt64, UInt32)?
        switch operation {
        case .append: key = (try? frame.header(as: Elasticstream_V1_AppendRequest.self)).map { ($0.streamID, $0.rangeIndex) }
        case .fetch: key = (try? frame.header(as: Elasticstream_V1_FetchRequest.self)).map { ($0.streamID, $0.rangeIndex) }
        case .createRange:
            key = (try? frame.header(as: Elasticstream_V1_CreateRangeRequest.self)).map { ($0.range.streamID, $0.range.index) }
        case .sealRange:
            key = (try? frame.header(as: Elasticstream_V1_SealRangeRequest.self)).map { ($0.range.streamID, $0.range.index) }
        case .describeRange:
            key = (try? frame.header(as: Elasticstream_V1_DescribeRangeRequest.self)).map { ($0.streamID, $0.rangeIndex) }
        default: key = nil
        }
        guard let key else { return nil }
        return RangeRouting.shard(streamID: key.0, rangeIndex: key.1, shardCount: shardCount)
    }

    /// Serves the request here when this shard owns its range, else on the owner (over the cross-shard rings).
    func route(_ frame: Frame) async -> Frame {
        if let owner = owner(of: frame), owner != index, let forward {
            return await forward(owner, frame)
        }
        return await respond(to: frame)
    }

    // MARK: - Operations

    func respond(to frame: Frame) async -> Frame {
        guard let operation = frame.operation else {
            return Frame(errorTo: frame, status: Self.status(.unsupportedOperation,
                "operation 0x\(String(frame.rawOperation, radix: 16)) is unknown"))
        }
        do {
            switch operation {
            case .ping, .heartbeat:
                return try Frame(responseTo: frame, header: Elasticstream_V1_PingResponse())
            case .append: return try await append(frame)
            case .fetch: return try await fetch(frame)
            case .createRange: return try await createRange(frame)
            case .sealRange: return try await sealRange(frame)
            case .describeRange: return try describeRange(frame)
            default:
                return Frame(errorTo: frame, status: Self.status(.unsupportedOperation,
                                                                 "a range server does not serve \(operation)"))
            }
        } catch let refusal as Refusal {
            return Frame(errorTo: frame, status: Self.status(refusal.code, refusal.message))
        } catch let error as FieldError {
            return Frame(errorTo: frame, status: Self.status(.invalidArgument, "\(operation): \(error)"))
        } catch let error as StoreError {
            return Frame(errorTo: frame, status: Self.status(Self.code(of: error), "\(error)"))
        } catch {
            return Frame(errorTo: frame, status: Self.status(.badRequest, "\(error)"))
        }
    }

    struct Refusal: Error {
        let code: ErrorCode
        let message: String
        init(_ code: ErrorCode, _ message: String) {
            self.code = code
            self.message = message
        }
    }

    static func code(of error: StoreError) -> ErrorCode {
        switch error {
        case .rangeNotFound: .rangeNotFound
        case .rangeConflict: .rangeEndMismatch
        case .corruption: .dataCorrupted
        case .entryTooLarge: .invalidArgument
        case .io(let io) where io.errno == 28: .storageFull
        case .io, .walFailed: .storageFailed
        case .invalidConfiguration: .unknown
        }
    }

    // MARK: - Stop

    /// Stops accepting, tells every client to go away, waits for the requests in flight (at most `drain_timeout`),
    /// then closes the connections and the store (`FrameServer.stop`).
    func stop() async {
        accepting = false
        await frameServer?.stop(drainTimeout: configuration.drainTimeout)
        for client in peers.values { await client.close() }
        // Readers still waiting get their (empty) answers.
        let stillWaiting = waiting
        waiting = [:]
        waiters = [:]
        readerDeadlines.removeAll()
        for (_, entry) in stillWaiting { entry.continuation.resume() }
        await fences.close()
        await store.close()
    }
}

@available(*, unavailable)
extension ShardService: Sendable {}
