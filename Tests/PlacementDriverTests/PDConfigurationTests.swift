import Foundation
import PlacementDriver
import Testing

@Suite struct PDConfigurationTests {
    /// The shipped files parse, and say what the docs say.
    @Test func theShippedConfigurationsAreValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Config")
        let standalone = try PDConfiguration(
            configurationText: String(contentsOf: root.appendingPathComponent("standalone.toml"), encoding: .utf8))
        #expect(standalone.members.map(\.id) == [1])
        #expect(standalone.ownAddress?.port == 2380)
        for member in 1...3 {
            let cluster = try PDConfiguration(
                configurationText: String(contentsOf: root.appendingPathComponent("cluster-\(member).toml"), encoding: .utf8))
            #expect(cluster.memberID == UInt64(member))
            #expect(cluster.members.map(\.port) == [2381, 2382, 2383])
        }
    }

    /// A bad file is an error that names the file, the line, the key and the problem.
    @Test func mistakesNameTheKeyAndTheProblem() {
        func message(_ text: String) -> String {
            do {
                _ = try PDConfiguration(configurationText: text, file: "bad.toml")
                return "accepted"
            } catch {
                return error.description
            }
        }
        #expect(message("[pd]\nmember_id = 0") == "bad.toml: [pd] member_id must be an integer in 1...2147483647, not 0")
        #expect(message("[pd]\nmembers = [\"1=localhost\"]").contains("[pd] members holds '1=localhost', not \"id=host:port\""))
        #expect(message("[pd]\ntick = \"fast\"").contains("[pd] tick must be a quoted positive duration"))
        #expect(message("[pd]\ndata_dir = 3").contains("[pd] data_dir must be a quoted string"))
        #expect(message("[pd]\nmember_id = = 1").hasPrefix("bad.toml:2:"), "a syntax error names its line")
        #expect(message("[pd]\nelection_tick = 10").contains("unknown key 'election_tick' in [pd]"))
        #expect(message("[pd]\nmember_id = 4\nmembers = [\"1=127.0.0.1:1\"]").contains("member_id 4 is not among members"))
        #expect(message("[pd]\nheartbeat_ticks = 10\nelection_ticks = 10").contains("must be below election_ticks"))
        #expect(message("[reactor]\nanything = 1\n[pd]\nmember_id = 1") == "accepted", "other tables are not [pd]'s business")
    }
}
