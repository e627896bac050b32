import Foundation
import Raft
import TOMLKit
import Transport

/// The `[pd]` table of a configuration file in `Config/`, read with TOMLKit (the whole file must be valid TOML).
/// Durations are strings such as "50ms". Unknown keys and bad values are errors that name the file, the table, the
/// key and the problem; a syntax error names the line.
public struct PDConfiguration: Sendable, Hashable {
    /// This member's id in the group.
    public var memberID: NodeID = 1
    /// Where this member keeps its Raft log.
    public var dataDirectory = "/var/tmp/elastic-stream/pd"
    /// Every member of a new group as "id=host:port" or "id=host:port:peer_port" (the client port, and the port
    /// Raft messages between members use: the client port plus 10000 when not given), this one included. One member by default (the embedded
    /// default: a single-member quorum).
    public var members: [MemberAddress] = [MemberAddress(id: 1, host: "127.0.0.1", port: 2380)]
    public var tick: Duration = .milliseconds(50)
    public var electionTicks = 10
    public var heartbeatTicks = 1
    /// A range server silent for longer is not given new replicas.
    public var serverHeartbeatTimeout: Duration = .seconds(10)
    public var snapshotEvery: UInt64 = 100_000
    /// Bounds and timeouts of the client port's connections (the same keys as [server]'s).
    public var connectionLimits = ConnectionLimits()

    public init() {}

    public var ownAddress: MemberAddress? { members.first { $0.id == memberID } }

    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public let description: String
        public init(description: String) { self.description = description }
    }

    public init(configurationText text: String, file: String = "<text>") throws(Invalid) {
        self.init()
        let document: TOMLTable
        do {
            document = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw Invalid(description: "\(file):\(error.source.begin.line): \(error.description)")
        } catch {
            throw Invalid(description: "\(file): \(error)")
        }
        var sawMembers = false
        if let value = document["pd"] {
            guard let table = value.table else { throw Invalid(description: "\(file): [pd] must be a table") }
            for key in table.keys.sorted() {
                let value = table[key]!
                let place = "\(file): [pd] \(key)"
                switch key {
                case "member_id": memberID = NodeID(try Self.integer(value, place, in: 1...Int(Int32.max)))
                case "data_dir": dataDirectory = try Self.string(value, place)
                case "members":
                    guard let array = value.array, !array.isEmpty else {
                        throw Invalid(description: "\(place) must be a non-empty array of \"id=host:port\" strings")
                    }
                    var parsed: [MemberAddress] = []
                    for item in array { parsed.append(try Self.member(try Self.string(item, place), place)) }
                    members = parsed
                    sawMembers = true
                case "tick": tick = try Self.duration(value, place)
                case "election_ticks": electionTicks = try Self.integer(value, place, in: 2...10_000)
                case "heartbeat_ticks": heartbeatTicks = try Self.integer(value, place, in: 1...10_000)
                case "server_heartbeat_timeout": serverHeartbeatTimeout = try Self.duration(value, place)
                case "snapshot_every": snapshotEvery = UInt64(try Self.integer(value, place, in: 10...100_000_000))
                case _ where try Self.connectionKey(key, value, place, into: &connectionLimits): break
                default: throw Invalid(description: "\(file): unknown key '\(key)' in [pd]")
                }
            }
        }
        if !sawMembers { members = [MemberAddress(id: memberID, host: "127.0.0.1", port: 2380)] }
        try validate(file)
    }

    public func validate(_ file: String = "<text>") throws(Invalid) {
        guard heartbeatTicks < electionTicks else {
            throw Invalid(description: "\(file): [pd] heartbeat_ticks (\(heartbeatTicks)) must be below election_ticks (\(electionTicks))")
        }
        guard Set(members.map(\.id)).count == members.count else {
            throw Invalid(description: "\(file): [pd] members lists an id twice")
        }
        guard ownAddress != nil else {
            throw Invalid(description: "\(file): [pd] member_id \(memberID) is not among members \(members.map(\.id))")
        }
    }

    /// Reads `key` into `limits` when it is one of the connection keys shared by [server] and [pd]; false when it is
    /// not one of them.
    public static func connectionKey(_ key: String, _ value: TOMLValueConvertible, _ place: String,
                                     into limits: inout ConnectionLimits) throws(Invalid) -> Bool {
        switch key {
        case "max_connections": limits.maxConnections = try integer(value, place, in: 1...1_000_000)
        case "max_buffered_bytes": limits.maxBufferedBytes = try integer(value, place, in: (1 << 20)...(1 << 40))
        case "max_requests_per_connection": limits.maxRequestsPerConnection = try integer(value, place, in: 1...1_000_000)
        case "max_bytes_per_connection":
            limits.maxBytesPerConnection = try integer(value, place, in: (1 << 20)...(1 << 34))
        case "idle_timeout": limits.idleTimeout = try duration(value, place)
        case "frame_timeout": limits.frameTimeout = try duration(value, place)
        default: return false
        }
        return true
    }

    /// Shared with the other tables of a configuration file.
    public static func integer(_ value: TOMLValueConvertible, _ place: String, in range: ClosedRange<Int>)
        throws(Invalid) -> Int
    {
        guard let number = value.int, range.contains(number) else {
            throw Invalid(description: "\(place) must be an integer in \(range), not \(value.debugDescription)")
        }
        return number
    }

    public static func string(_ value: TOMLValueConvertible, _ place: String) throws(Invalid) -> String {
        guard let text = value.string else {
            throw Invalid(description: "\(place) must be a quoted string, not \(value.debugDescription)")
        }
        return text
    }

    private static func member(_ item: String, _ place: String) throws(Invalid) -> MemberAddress {
        let parts = item.split(separator: "=")
        let address = parts.count == 2 ? parts[1].split(separator: ":") : []
        guard parts.count == 2, let id = NodeID(parts[0]), id > 0, address.count == 2 || address.count == 3,
              let port = UInt16(address[1]), port > 0
        else {
            throw Invalid(description: "\(place) holds '\(item)', not \"id=host:port\" or \"id=host:port:peer_port\"")
        }
        var peerPort = MemberAddress.defaultPeerPort(for: port)
        if address.count == 3 {
            guard let explicit = UInt16(address[2]), explicit > 0 else {
                throw Invalid(description: "\(place) holds '\(item)': peer_port is not a port")
            }
            peerPort = explicit
        }
        guard let peerPort, peerPort != port else {
            throw Invalid(description: "\(place) holds '\(item)': give a peer port apart from the client port "
                          + "(\"id=host:port:peer_port\")")
        }
        return MemberAddress(id: id, host: String(address[0]), port: port, peerPort: peerPort)
    }

    public static func duration(_ value: TOMLValueConvertible, _ place: String) throws(Invalid) -> Duration {
        let body = value.string ?? ""
        let units: [(String, Int64)] = [("ms", 1_000_000), ("us", 1_000), ("s", 1_000_000_000)]
        for (suffix, nanoseconds) in units where body.hasSuffix(suffix) {
            if let number = Int64(body.dropLast(suffix.count)), number > 0 {
                let (product, overflow) = number.multipliedReportingOverflow(by: nanoseconds)
                guard !overflow else { throw Invalid(description: "\(place) is too long: \(body)") }
                return .nanoseconds(product)
            }
        }
        throw Invalid(description: "\(place) must be a quoted positive duration such as \"50ms\", not \(value.debugDescription)")
    }
}
