import SwiftProtobuf
import Wire

extension PDCommand {
    /// Decodes the request and checks every number in it against `WireBounds`, without looking at the state. The
    /// leader checks a command before it proposes it, and `PDStateMachine.apply` checks it again before applying it
    /// (a log written by an older build may hold a command refused today), so a refused command is the same `.failed`
    /// result on every member and never reaches arithmetic that would trap.
    public func validate() throws(PDError) {
        do {
            try validateFields()
        } catch let error as FieldError {
            throw PDError(.invalidArgument, "\(operation): \(error)")
        } catch let error as PDError {
            throw error
        } catch {
            throw PDError(.badRequest, "\(operation): the request does not decode: \(error)")
        }
    }

    private func validateFields() throws {
        switch operation {
        case .createStream:
            let stream = try Elasticstream_V1_CreateStreamRequest(serializedBytes: request).stream
            try FieldError.check(stream.replicaCount, atMost: 16, "stream.replica_count")
            try FieldError.check(stream.ackCount, atMost: 16, "stream.ack_count")
            try FieldError.check(stream.retentionMs, atMost: WireBounds.maxRetentionMs, "stream.retention_ms")
        case .openStream:
            let open = try Elasticstream_V1_OpenStreamRequest(serializedBytes: request)
            // The stream's new epoch is one above the larger of this and its current one.
            try FieldError.check(open.epoch, atMost: WireBounds.maxEpoch - 1, "epoch")
        case .updateStream:
            let update = try Elasticstream_V1_UpdateStreamRequest(serializedBytes: request)
            if update.hasReplicaCount { try FieldError.check(update.replicaCount, atMost: 16, "replica_count") }
            if update.hasAckCount { try FieldError.check(update.ackCount, atMost: 16, "ack_count") }
            if update.hasRetentionMs {
                try FieldError.check(update.retentionMs, atMost: WireBounds.maxRetentionMs, "retention_ms")
            }
        case .trimStream:
            let trim = try Elasticstream_V1_TrimStreamRequest(serializedBytes: request)
            try FieldError.offset(trim.startOffset, "start_offset")
        case .deleteStream:
            _ = try Elasticstream_V1_DeleteStreamRequest(serializedBytes: request)
        case .pdCreateRange:
            let create = try Elasticstream_V1_CreateRangeRequest(serializedBytes: request)
            try create.range.validate()
            try FieldError.check(create.avoidServerIds.count, atMost: 64, "avoid_server_ids")
        case .pdSealRange:
            let seal = try Elasticstream_V1_SealRangeRequest(serializedBytes: request)
            try seal.range.validate()
        case .registerRangeServer:
            let register = try Elasticstream_V1_RegisterRangeServerRequest(serializedBytes: request)
            try register.server.validate()
        case .rangeServerHeartbeat:
            let heartbeat = try Elasticstream_V1_RangeServerHeartbeatRequest(serializedBytes: request)
            switch heartbeat.state {
            case .unspecified, .serverOnline, .serverOffline, .serverDraining: break
            default: throw FieldError("state", "is \(heartbeat.state.rawValue), not a server state")
            }
        case .allocateID:
            let allocate = try Elasticstream_V1_AllocateIdRequest(serializedBytes: request)
            guard allocate.count >= 1, allocate.count <= 1 << 20 else {
                throw FieldError("count", "is \(allocate.count), not in 1...\(1 << 20)")
            }
        case .commitObject:
            let object = try Elasticstream_V1_CommitObjectRequest(serializedBytes: request).object
            try FieldError.offset(object.startOffset, "object.start_offset")
            try FieldError.offset(object.endOffset, "object.end_offset")
            try FieldError.check(object.objectID, atMost: WireBounds.maxID, "object.object_id")
        default:
            throw PDError(.unsupportedOperation, "\(operation) does not change the placement driver's state")
        }
    }
}
