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
    /// One multiplexed connection per member (`RPCClient`: request ids, deadlines, reconnection, GOAWAY).
    private var members: [String: RPCClient] = [:]
    private var closed = false
    /// Sent with every call (and its retries), so that the placement driver applies a retried write only once.
    public let clientID: UInt64
    private var nextSequence: UInt64 = 1

    /// `addresses`: "host:port" of the members.
    public init(addresses: [String], on context: ShardContext, timeout: Duration = .seconds(5)) {
        self.addresses = addresses
        self.context = context
        self.timeout = timeout
        clientID = context.random(in: 1...UInt64.max)
    }

    /// The address the client currently talks to.
    public var currentAddress: String { addresses[target] }

    public func close() async {
        closed = true
        for client in members.values { await client.close() }
        members = [:]
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
    }

    /// One request to the current target, within `deadline`; a member that cannot be reached moves the target to
    /// the next address.
    private func attempt(_ operation: OperationCode, _ header: [UInt8], _ identity: [UInt8], until deadline: Instant)
        async throws(PDError) -> Frame
    {
        guard !closed else { throw PDError(.shuttingDown, "the client closed") }
        let address = addresses[target]
        let client: RPCClient
        if let known = members[address] {
            client = known
        } else {
            client = RPCClient(address: address, on: context)
            members[address] = client
        }
        let result = await client.call(operation, headerBytes: header, payload: identity,
                                       timeout: max(deadline - context.now, .milliseconds(1)), errorFrames: true)
        switch result {
        case .success(let frame):
            return frame
        case .failure(.timedOut):
            throw PDError(.timeout, "no answer from \(address)")
        case .failure(.malformed(let detail)):
            throw PDError(.badRequest, detail)
        case .failure(let error):
            if addresses[target] == address { target = (target + 1) % addresses.count }
            throw PDError(.unknown, "\(error)")
        }
    }
}

@available(*, unavailable)
extension PDClient: Sendable {}
