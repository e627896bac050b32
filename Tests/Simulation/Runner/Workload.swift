import Client
import PlacementDriverClient
import Reactor
import Records
import Simulation

/// Everything the clients were told, kept for the checks: per stream, which payload was acknowledged at which offset
/// (and to which writer epoch), which payloads were sent without an answer (they may or may not be there), and the
/// history of the placement driver calls whose results the model checks.
final class Ledger: @unchecked Sendable {
    struct Acknowledged {
        var offset: UInt64
        var payload: [UInt8]
        var epoch: UInt64
        /// When the append was made (virtual time).
        var invoked: UInt64
    }

    /// One call to open a stream: when it was made, when it answered, and the epoch it got.
    struct OpenCall {
        var stream: UInt64
        var invoked: UInt64
        var answered: UInt64
        var epoch: UInt64
    }

    struct CreateCall {
        var invoked: UInt64
        var answered: UInt64
        var stream: UInt64
    }

    var streams: [UInt64] = []
    var acknowledged: [UInt64: [Acknowledged]] = [:]
    var unanswered: [UInt64: Set<[UInt8]>] = [:]
    var opens: [OpenCall] = []
    var creates: [CreateCall] = []
    /// Per stream: the highest trim the placement driver answered (the stream starts there or later), and the highest
    /// trim asked for at all (answered or not: the stream never starts past it).
    var trimmed: [UInt64: UInt64] = [:]
    var trimsAsked: [UInt64: UInt64] = [:]
    var trims = 0
    /// What each writer is doing now (for a liveness failure's report).
    var doing: [Int: String] = [:]
    var appendsAcknowledged = 0
    var appendsFailed = 0
    var failures: [String: Int] = [:]
    /// Set when the run stops writing (the final checks read what is there).
    var stopWriting = false
    /// Virtual time of the last acknowledgement, for the liveness check.
    var lastAcknowledged: UInt64 = 0
    /// The same, per writer.
    var lastAcknowledgedBy: [Int: UInt64] = [:]

    func noteFailure(_ error: ClientError) {
        appendsFailed += 1
        let key: String
        switch error {
        case .fenced: key = "fenced"
        case .placementDriver: key = "placement driver"
        case .server(let code, _): key = "server \(code)"
        case .unavailable: key = "unavailable"
        case .offsetOutOfRange: key = "offset out of range"
        case .invalidArgument: key = "invalid argument"
        case .closed: key = "closed"
        }
        failures[key, default: 0] += 1
    }
}

/// One writer process: creates its stream (retrying until the placement driver answers), then appends small batches
/// of unique payloads for as long as the run writes. On a failure it records the batch as unanswered, closes its
/// writer and opens the stream again (a new epoch); now and then it takes over the other writer's stream, fencing it.
struct Writer {
    let number: Int
    let simulator: Simulator
    let ledger: Ledger
    let pd: [String]

    func start(on process: SimulatedProcess) {
        let box = SimulatorBox((simulator, ledger))
        let (number, pd) = (self.number, self.pd)
        process.start(shards: 1) { _, context in
            let (simulator, ledger) = box.value
            await Writer.run(number: number, pd: pd, simulator: simulator, ledger: ledger, context: context)
        }
    }

    static func run(number: Int, pd: [String], simulator: Simulator, ledger: Ledger, context: ShardContext) async {
        var configuration = ClientConfiguration()
        configuration.placementDriverTimeout = .seconds(5)
        configuration.appendTimeout = .seconds(2)
        configuration.requestTimeout = .seconds(3)
        let client = ElasticStreamClient(pd: pd, on: context, configuration: configuration)
        var stream: UInt64 = 0
        while stream == 0 && !ledger.stopWriting {
            let invoked = simulator.now
            do {
                let record = try await client.createStream(replicas: 3, ackCount: 2)
                stream = record.streamID
                ledger.creates.append(Ledger.CreateCall(invoked: invoked, answered: simulator.now, stream: stream))
                ledger.streams.append(stream)
            } catch {
                try? await context.sleep(for: .milliseconds(200))
            }
        }
        var sequence = 0
        var writer: StreamWriter?
        var target = stream
        while !ledger.stopWriting {
            if writer == nil {
                // Sometimes take over another writer's stream: it is fenced, and must get no acknowledgement after.
                target = stream
                if ledger.streams.count > 1 && simulator.chance(0.15) {
                    target = ledger.streams[Int(simulator.below(UInt64(ledger.streams.count)))]
                }
                let invoked = simulator.now
                ledger.doing[number] = "opening stream \(target) since \(invoked / 1_000_000) ms"
                do {
                    let opened = try await client.openStream(target)
                    ledger.opens.append(Ledger.OpenCall(stream: target, invoked: invoked, answered: simulator.now,
                                                        epoch: opened.epoch))
                    writer = opened
                } catch {
                    ledger.noteFailure(error)
                    try? await context.sleep(for: .milliseconds(100 + Int(simulator.below(300))))
                    continue
                }
            }
            guard let current = writer else { continue }
            let count = 1 + Int(simulator.below(4))
            var records: [Record] = []
            var payloads: [[UInt8]] = []
            for _ in 0..<count {
                sequence += 1
                var payload = Array("writer-\(number)-\(sequence)-".utf8)
                let extra = Int(simulator.below(300))
                for _ in 0..<extra { payload.append(UInt8(truncatingIfNeeded: simulator.next())) }
                payloads.append(payload)
                records.append(Record(timestamp: context.wallClockMilliseconds, value: payload))
            }
            let invoked = simulator.now
            let base: UInt64
            ledger.doing[number] = "appending to stream \(target) since \(invoked / 1_000_000) ms"
            do {
                base = try await current.append(records)
                for (i, payload) in payloads.enumerated() {
                    ledger.acknowledged[target, default: []].append(
                        Ledger.Acknowledged(offset: base + UInt64(i), payload: payload, epoch: current.epoch,
                                            invoked: invoked))
                }
                ledger.appendsAcknowledged += 1
                ledger.lastAcknowledged = simulator.now
                ledger.lastAcknowledgedBy[number] = simulator.now
            } catch {
                ledger.noteFailure(error)
                for payload in payloads { ledger.unanswered[target, default: []].insert(payload) }
                ledger.doing[number] = "closing stream \(target) after a failure since \(simulator.now / 1_000_000) ms"
                await current.close(timeout: .seconds(2))
                writer = nil
                try? await context.sleep(for: .milliseconds(50 + Int(simulator.below(200))))
                continue
            }
            // Now and then drop the oldest records: a reader then starts where the stream starts, and every
            // acknowledged record from there on must still be there.
            if simulator.chance(0.01) {
                let offset = base - min(base, simulator.below(200))
                ledger.trimsAsked[target] = max(ledger.trimsAsked[target] ?? 0, offset)
                ledger.doing[number] = "trimming stream \(target) since \(simulator.now / 1_000_000) ms"
                do {
                    try await current.trim(before: offset)
                    ledger.trimmed[target] = max(ledger.trimmed[target] ?? 0, offset)
                    ledger.trims += 1
                } catch {
                    ledger.failures["trim", default: 0] += 1
                }
            }
            // Hand the stream back now and then, so that epochs move while writes go on.
            if simulator.chance(0.02) {
                ledger.doing[number] = "handing stream \(target) back since \(simulator.now / 1_000_000) ms"
                await current.close(timeout: .seconds(2))
                writer = nil
            }
            ledger.doing[number] = "pausing between appends since \(simulator.now / 1_000_000) ms"
            try? await context.sleep(for: .milliseconds(Int(simulator.below(20))))
        }
        if let writer { await writer.close(timeout: .seconds(2)) }
    }
}
