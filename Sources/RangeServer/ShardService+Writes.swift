import Logging
import Platform
import Reactor
import Records
import Store
import SwiftProtobuf
import Transport
import Wire

/// The requests that change replicas: APPEND, CREATE_RANGE, SEAL_RANGE (seal and fence), and the epoch check.
extension ShardService {
    func append(_ frame: Frame) async throws -> Frame {
        let request = try frame.header(as: Elasticstream_V1_AppendRequest.self)
        let key = RangeKey(streamID: request.streamID, index: request.rangeIndex)
        try FieldError.offset(request.acknowledgedOffset, "acknowledged_offset")
        try checkEpoch(request.epoch, of: key)
        guard store.describe(key) != nil else { throw Refusal(.rangeNotFound, "no replica of \(key) here") }
        lastHeard[key] = context.now
        let payloadCount = frame.withPayload { $0.count }
        guard payloadCount > 0 else {
            // Only the writer's acknowledged end (it had nothing more to send, or it tells it is alive). Recorded
            // durably before the answer, so that committed readers never see less after a restart.
            if request.acknowledgedOffset > 0 {
                try await store.acknowledge(key, upTo: request.acknowledgedOffset)
                wake(key)
            }
            guard let description = store.describe(key) else { throw Refusal(.rangeNotFound, "no replica of \(key) here") }
            var response = Elasticstream_V1_AppendResponse()
            response.confirmedOffset = description.confirmedEnd
            return try Frame(responseTo: frame, header: response)
        }
        // The store may hold the bytes across a wait for room in the log: they live in one buffer until it answers.
        let stable = UnsafeMutableRawBufferPointer.allocate(byteCount: payloadCount, alignment: 8)
        defer { stable.deallocate() }
        frame.withPayload { stable.copyMemory(from: $0) }
        let raw = UnsafeRawBufferPointer(stable)
        // Validate every batch before storing any of them.
        var batches: [RecordBatchView] = []
        var position = 0
        while position < raw.count {
            let view = try Self.batch(in: raw, at: position, of: key)
            batches.append(view)
            position += view.bytes.count
        }
        // One batch per request is the writer's normal case: it keeps appends of one range in arrival order. Several
        // batches are stored one after another.
        var confirmed: UInt64 = 0
        for (i, batch) in batches.enumerated() {
            // The writer's acknowledged end rides, durably, with the first batch.
            let outcome = try await store.append(batch, acknowledged: i == 0 ? request.acknowledgedOffset : 0)
            switch outcome {
            case .committed(let end), .alreadyCommitted(let end):
                confirmed = end
            case .pending:
                throw Refusal(.appendPending, "an append of these offsets is in flight on \(key)")
            case .overtaken(let expected):
                throw Refusal(.appendOvertaken, "\(key) expects offset \(expected) next")
            case .sealed(let end):
                throw Refusal(.rangeSealed, "\(key) is sealed at \(end)")
            case .rangeNotFound:
                throw Refusal(.rangeNotFound, "no replica of \(key) here")
            }
        }
        appendedBytes += UInt64(payloadCount)
        wake(key)
        var response = Elasticstream_V1_AppendResponse()
        response.confirmedOffset = confirmed
        return try Frame(responseTo: frame, header: response)
    }

    /// The valid batch of range `key` at `position` of an append's payload.
    static func batch(in raw: UnsafeRawBufferPointer, at position: Int, of key: RangeKey) throws -> RecordBatchView {
        let rest = UnsafeRawBufferPointer(rebasing: raw[position...])
        let view: RecordBatchView
        do {
            let length = try RecordBatchView.batchLength(of: rest)
            guard length <= rest.count else {
                throw Refusal(.badRequest, "record batch at byte \(position) runs past the payload")
            }
            view = try RecordBatchView(validating: UnsafeRawBufferPointer(rebasing: rest[..<length]))
        } catch let error as RecordError {
            if case .checksumMismatch(let stored, let computed) = error {
                throw Refusal(.checksumMismatch, "record batch at byte \(position): stored checksum "
                              + "\(String(stored, radix: 16)), computed \(String(computed, radix: 16))")
            }
            if case .outOfRange = error { throw Refusal(.invalidArgument, "record batch at byte \(position): \(error)") }
            throw Refusal(.badRequest, "record batch at byte \(position): \(error)")
        }
        guard view.streamID == key.streamID, view.rangeIndex == key.index else {
            throw Refusal(.invalidArgument, "record batch at byte \(position) is of stream \(view.streamID) "
                          + "range \(view.rangeIndex), not \(key)")
        }
        return view
    }

    func createRange(_ frame: Frame) async throws -> Frame {
        let request = try frame.header(as: Elasticstream_V1_CreateRangeRequest.self)
        try request.range.validate()
        let key = RangeKey(streamID: request.range.streamID, index: request.range.index)
        try checkEpoch(request.epoch, of: key)
        do {
            try await store.createRange(key, start: request.range.startOffset)
        } catch .rangeConflict(_, let detail) {
            throw Refusal(.rangeAlreadyExists, "\(key): \(detail)")
        }
        if store.describe(key)?.isSealed == false, lastHeard[key] == nil { lastHeard[key] = context.now }
        var response = Elasticstream_V1_CreateRangeResponse()
        response.range = request.range
        return try Frame(responseTo: frame, header: response)
    }

    func sealRange(_ frame: Frame) async throws -> Frame {
        let request = try frame.header(as: Elasticstream_V1_SealRangeRequest.self)
        try request.range.validate()
        let key = RangeKey(streamID: request.range.streamID, index: request.range.index)
        var range = request.range
        if request.range.sealed {
            try await seal(key, request.range)
        } else {
            // The fence is on disk before it is answered; a range not created here yet is fenced too. A fence of an
            // older epoch than one already here comes from a writer that is fenced itself.
            try checkEpoch(request.epoch, of: key)
            do {
                try await fences.fence(key, epoch: request.epoch)
            } catch {
                throw Refusal(.storageFailed, "the fence of \(key) could not be written: \(error)")
            }
            guard store.describe(key) != nil else { throw Refusal(.rangeNotFound, "no replica of \(key) here") }
            range.endOffset = try await store.fence(key)
            range.sealed = false
            wake(key)
        }
        var response = Elasticstream_V1_SealRangeResponse()
        response.range = range
        return try Frame(responseTo: frame, header: response)
    }

    /// Seals the replica at the range's end (creating it first if it never got the range), then repairs it from the
    /// other replicas if it holds less.
    func seal(_ key: RangeKey, _ range: Elasticstream_V1_Range) async throws {
        let end = range.endOffset
        guard end >= range.startOffset else {
            throw Refusal(.invalidArgument, "\(key): end \(end) is before its start \(range.startOffset)")
        }
        if store.describe(key) == nil { try await store.createRange(key, start: range.startOffset) }
        _ = try await store.seal(key, at: end)
        lastHeard[key] = nil
        wake(key)
        if let description = store.describe(key), description.confirmedEnd < end {
            startRepair(key, end: end, servers: range.servers)
        }
    }

    /// Refuses a request of a writer older than the one that fenced the range.
    func checkEpoch(_ epoch: UInt64, of key: RangeKey) throws(Refusal) {
        let fenced = fences.epoch(of: key)
        guard epoch >= fenced else {
            throw Refusal(.epochFenced, "\(key) was fenced by a writer of epoch \(fenced); this one has epoch \(epoch)")
        }
    }
}
