import Foundation
import Platform
import Reactor
import SwiftProtobuf
import Transport
import Wire

/// A client of the placement driver, on one shard: finds the leader from a list of member addresses (following
/// NOT_LEADER answers to the leader they name, trying the next address when one is down or knows no leader), retries
/// every 10 to 50 ms (an election is short), and gives up cleanly after `timeout` with the last error it saw.
/// Shard-bound.
public final class PDClient {
    public private(set) var addresses: [String]
    let context: ShardContext
    /// How long one call may take, retries included.
    public var timeout: Duration
    /// How long one attempt waits for its answer before the call moves to the next member: a member that stalls
    /// (its process stopped, its disk hung) while its connection stays open must not hold the call until `timeout`.
    /// Retrying a write is safe: the placement driver answers a repeat of the same call with the first result.
    public var attemptTimeout: Duration = .seconds(1)
    private var target = 0
    private var connection: FrameConnection?
    private var pending: [UInt64: UnsafeContinuation<Result<Frame, PDError>, Never>] = [:]
    private var deadlines: [UInt64: Instant] = [:]
    private var sweeping = false
    private var nextRequestID: UInt64 = 1
    /// Sent with every call (and its retries), so that the placement driver applies a retried write only once.
    public let clientID = UInt64.random(in: 1...UInt64.max)
    private var nextSequence: UInt64 = 1

    /// `addresses`: "host:port" of the members.
    public init(addresses: [String], on context: ShardContext, timeout: Duration = .seconds(5)) {
        self.addresses = addresses
        self.context = context
        self.timeout = timeout
    }

    /// The address the client currently talks to.
    public var currentAddress: String { addresses[target] }

    public func close() async {
        await connection?.close()
        connection = nil
        fail(PDError(.shuttingDown, "the client closed"))
    }

    /// Sends `request` as `operation` and decodes the answer as `Response`; a refusal (other than NOT_LEADER or
    /// NO_LEADER, which are retried) throws its code and message.
    public func call<Response: SwiftProtobuf.Message>(
        _ operation: OperationCode, _ request: some SwiftProtobuf.Message, as _: Response.Type = Response.self
    ) async throws(PDError) -> Response {
        let header: [UInt8]
        do {
            header = try request.serializedBytes()
        } catch {
            throw PDError(.badRequest, "the request does not encode: \(error)")
        }
        let sequence = nextSequence
        nextSequence += 1
        var identity: [UInt8] = []
        withUnsafeBytes(of: clientID.littleEndian) { identity += $0 }
        withUnsafeBytes(of: sequence.littleEndian) { identity += $0 }
        let deadline = context.now + timeout
        var backoff = Duration.milliseconds(10)
        var last = PDError(.timeout, "no member answered")
        while context.now < deadline {
            let frame: Frame
            do {
                frame = try await attempt(operation, header, identity, until: min(deadline, context.now + attemptTimeout))
            } catch {
                last = error
                if error.code == .timeout {
                    // No answer in time from this member: ask the next one (it names the leader if it is not).
                    await switchTo((target + 1) % addresses.count)
                    continue
                }
                try? await context.sleep(for: min(backoff, .milliseconds(50)))
                backoff = min(backoff * 2, .milliseconds(500))
                continue
            }
            if frame.flags.contains(.error) {
                let status = (try? frame.header(as: Elasticstream_V1_Status.self)) ?? Status()
                switch status.code {
                case .notLeader, .noLeader:
                    last = PDError(status.code, status.message)
                    if !status.leaderAddress.isEmpty && !addresses.contains(status.leaderAddress) {
                        // A leader this client was not told about: follow it too.
                        addresses.append(status.leaderAddress)
                    }
                    if let leader = addresses.firstIndex(of: status.leaderAddress), leader != target {
                        await switchTo(leader)
                    } else {
                        // A member that names no leader may be cut off from the majority: try the next one.
                        if status.leaderAddress.isEmpty { await switchTo((target + 1) % addresses.count) }
                        // An election is short: look again soon.
                        try? await context.sleep(for: min(backoff, .milliseconds(50)))
                        backoff = min(backoff * 2, .milliseconds(500))
                    }
                    continue
                default:
                    var error = PDError(status.code, status.message)
                    error.leader = status.leaderID
                    throw error
                }
            }
            do {
                return try frame.header(as: Response.self)
            } catch {
                throw PDError(.badRequest, "the answer does not decode: \(error)")
            }
        }
        throw PDError(.timeout, "the placement driver did not answer within \(timeout): \(last)")
    }

    private func switchTo(_ index: Int) async {
        target = index
        await connection?.close()
        connection = nil
    }

    /// One request to the current target; a connection failure moves to the next address.
    private func attempt(_ operation: OperationCode, _ header: [UInt8], _ identity: [UInt8], until deadline: Instant)
        async throws(PDError) -> Frame
    {
        let connection = try await connected()
        let id = nextRequestID
        nextRequestID += 1
        let frame = Frame(operation: operation, requestID: id, header: header, payload: identity)
        let result = await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<Frame, PDError>, Never>) in
            pending[id] = continuation
            deadlines[id] = deadline
            startSweeping()
            if !connection.send(frame) {
                resolve(id, .failure(PDError(.unknown, "the connection to \(currentAddress) is closed")))
            }
        }
        return try result.get()
    }

    /// One task expires every request past its deadline, every 10 ms while any is pending (a timer per request
    /// would cost a task and two ring requests each).
    private func startSweeping() {
        guard !sweeping else { return }
        sweeping = true
        let client = ShardBound(self)
        context.spawn {
            while !client.value.pending.isEmpty {
                try? await client.value.context.sleep(for: .milliseconds(10))
                let now = client.value.context.now
                for (id, deadline) in client.value.deadlines where deadline <= now {
                    client.value.resolve(id, .failure(PDError(.timeout, "no answer from \(client.value.currentAddress)")))
                }
            }
            client.value.sweeping = false
        }
    }

    private func connected() async throws(PDError) -> FrameConnection {
        if let connection, !connection.closed { return connection }
        let address = addresses[target]
        let parts = address.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1]) else {
            throw PDError(.invalidArgument, "'\(address)' is not host:port")
        }
        do {
            let tcp = try await context.connect(host: String(parts[0]), port: port)
            let framed = FrameConnection(tcp, context: context)
            connection = framed
            let client = ShardBound((self, framed))
            context.spawn {
                await client.value.1.readLoop { frame in client.value.0.resolve(frame.requestID, .success(frame)) }
                // The connection ended: whatever waits on it fails and is retried.
                client.value.0.connectionEnded(client.value.1)
            }
            return framed
        } catch {
            target = (target + 1) % addresses.count
            throw PDError(.unknown, "cannot connect to \(address): \(error)")
        }
    }

    private func connectionEnded(_ ended: FrameConnection) {
        if connection === ended {
            connection = nil
            target = (target + 1) % addresses.count
            fail(PDError(.unknown, "the connection closed"))
        }
    }

    private func resolve(_ id: UInt64, _ result: Result<Frame, PDError>) {
        deadlines[id] = nil
        pending.removeValue(forKey: id)?.resume(returning: result)
    }

    private func fail(_ error: PDError) {
        let waiting = pending
        pending = [:]
        deadlines = [:]
        for (_, continuation) in waiting { continuation.resume(returning: .failure(error)) }
    }
}

@available(*, unavailable)
extension PDClient: Sendable {}
