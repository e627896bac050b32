import Logging
import Platform
import Reactor
import Records
import Store
import SwiftProtobuf
import Transport
import Wire

/// The requests that read: FETCH (and its waiting readers), DESCRIBE_RANGE.
extension ShardService {
    func fetch(_ frame: Frame) async throws -> Frame {
        let request = try frame.header(as: Elasticstream_V1_FetchRequest.self)
        let key = RangeKey(streamID: request.streamID, index: request.rangeIndex)
        try FieldError.offset(request.startOffset, "start_offset")
        try FieldError.offset(request.endOffset, "end_offset")
        guard var description = store.describe(key) else { throw Refusal(.rangeNotFound, "no replica of \(key) here") }
        guard request.startOffset >= description.start else {
            throw Refusal(.offsetOutOfRange, "\(key) starts at \(description.start) here, after \(request.startOffset)")
        }
        let bound = request.endOffset == 0 ? UInt64.max : request.endOffset
        let wait = min(Duration.milliseconds(Int64(request.maxWaitMs)), configuration.maxFetchWait)
        let deadline = context.now + wait
        // Committed-only readers of an open range see no further than the writer's acknowledged end.
        func readable(_ description: RangeDescription) -> UInt64 {
            let end = Self.readable(description)
            guard request.committedOnly, description.sealedEnd == nil else { return end }
            return min(end, max(description.acknowledgedEnd, description.start))
        }
        // A tailing reader waits for records past the end (or for the seal) within its bound.
        while request.maxWaitMs > 0, request.startOffset >= readable(description), request.startOffset < bound,
              !Self.complete(description), context.now < deadline {
            await waitForChange(key, until: deadline)
            guard let refreshed = store.describe(key) else { throw Refusal(.rangeNotFound, "\(key) was deleted") }
            description = refreshed
        }
        var payload: [UInt8] = []
        var next = request.startOffset
        let limit = min(readable(description), bound)
        if request.startOffset < limit {
            // The answer must fit in a frame.
            let budget = min(max(Int(request.maxBytes), 1), configuration.maxFrameBytes - (64 << 10))
            let batches = try await store.read(key, from: request.startOffset, maxBytes: budget)
            for batch in batches {
                let base = batch.withUnsafeBytes { RecordBatchView(alreadyValidated: $0).baseOffset }
                let end = batch.withUnsafeBytes { RecordBatchView(alreadyValidated: $0).endOffset }
                if base >= limit { break }
                payload += batch
                next = end
            }
        }
        var response = Elasticstream_V1_FetchResponse()
        response.confirmedOffset = description.confirmedEnd
        response.nextOffset = next
        return try Frame(responseTo: frame, header: response, payload: payload)
    }

    /// One past the last record readable here.
    static func readable(_ description: RangeDescription) -> UInt64 {
        min(description.confirmedEnd, description.sealedEnd ?? .max)
    }

    /// Sealed and holding every record up to the seal: nothing more will arrive.
    static func complete(_ description: RangeDescription) -> Bool {
        guard let sealed = description.sealedEnd else { return false }
        return description.confirmedEnd >= sealed
    }

    func describeRange(_ frame: Frame) throws -> Frame {
        let request = try frame.header(as: Elasticstream_V1_DescribeRangeRequest.self)
        let key = RangeKey(streamID: request.streamID, index: request.rangeIndex)
        guard let description = store.describe(key) else { throw Refusal(.rangeNotFound, "no replica of \(key) here") }
        var response = Elasticstream_V1_DescribeRangeResponse()
        response.range.streamID = key.streamID
        response.range.index = key.index
        response.range.startOffset = description.start
        response.range.sealed = description.isSealed
        response.range.endOffset = description.sealedEnd ?? 0
        response.confirmedOffset = description.confirmedEnd
        response.acknowledgedOffset = description.acknowledgedEnd
        if !description.isSealed {
            let idle = context.now - (lastHeard[key] ?? context.now)
            response.writerIdleMs = idle.wholeNanoseconds / 1_000_000
        }
        return try Frame(responseTo: frame, header: response)
    }

    // MARK: - Waiting readers

    func waitForChange(_ key: RangeKey, until deadline: Instant) async {
        let id = nextWaiter
        nextWaiter += 1
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            waiting[id] = (continuation, key)
            waiters[key, default: []].append(id)
            readerDeadlines.set(id, deadline)
        }
    }

    func wake(_ key: RangeKey) {
        guard let ids = waiters.removeValue(forKey: key) else { return }
        for id in ids {
            guard let entry = waiting.removeValue(forKey: id) else { continue }
            readerDeadlines.remove(id)
            entry.continuation.resume()
        }
    }

    /// A waiting reader's time is up: it answers with what there is.
    func expireWaiter(_ id: UInt64) {
        guard let entry = waiting.removeValue(forKey: id) else { return }
        waiters[entry.key]?.removeAll { $0 == id }
        if waiters[entry.key]?.isEmpty == true { waiters[entry.key] = nil }
        entry.continuation.resume()
    }
}
