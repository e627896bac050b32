import Foundation
import Raft
import Configuration
import Transport

/// The `[pd]` table of a configuration file in `Config/`, read with `ConfigurationFile` (the whole file must be valid
/// TOML). Durations are strings such as "50ms". Unknown keys and bad values are errors that name the file, the table,
/// the key and the problem; a syntax error names the line.
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

    public typealias Invalid = ConfigurationError

    /// The `[pd]` table of a configuration file (`ConfigurationFile`); the defaults without one.
    public init(configurationText text: String, file: String = "<text>") throws(Invalid) {
        self.init()
        var sawMembers = false
        if let table = try ConfigurationFile(text: text, file: file).table("pd") {
            for key in table.keys {
                switch key {
                case "member_id": memberID = NodeID(try table.integer(key, in: 1...Int(Int32.max)))
                case "data_dir": dataDirectory = try table.string(key)
                case "members":
                    let items = try table.strings(key)
                    guard !items.isEmpty else {
                        throw table.error(key, "must be a non-empty array of \"id=host:port:peer_port\" strings")
                    }
                    var parsed: [MemberAddress] = []
                    for item in items { parsed.append(try Self.member(item, table.place(key))) }
                    members = parsed
                    sawMembers = true
                case "tick": tick = try table.duration(key)
                case "election_ticks": electionTicks = try table.integer(key, in: 2...10_000)
                case "heartbeat_ticks": heartbeatTicks = try table.integer(key, in: 1...10_000)
                case "server_heartbeat_timeout": serverHeartbeatTimeout = try table.duration(key)
                case "snapshot_every": snapshotEvery = UInt64(try table.integer(key, in: 10...100_000_000))
                case _ where try connectionLimits.read(key, from: table): break
                default: throw table.unknown(key)
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
}
