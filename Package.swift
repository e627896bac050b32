// swift-tools-version: 6.1
import PackageDescription

// Every Swift target is built in the Swift 6 language mode, with complete strict concurrency checking, and with
// nonisolated async functions running on their caller's executor, so that nothing a shard runs silently moves to
// Swift's global concurrent executor.
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("NonisolatedNonsendingByDefault"),
    .enableExperimentalFeature("StrictConcurrency=complete"),
]

let package = Package(
    name: "ElasticStream",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Reactor", targets: ["Reactor"]),
        .library(name: "Platform", targets: ["Platform"]),
        .library(name: "Records", targets: ["Records"]),
        .library(name: "Wire", targets: ["Wire"]),
        .library(name: "Store", targets: ["Store"]),
        .library(name: "Raft", targets: ["Raft"]),
        .library(name: "PlacementDriver", targets: ["PlacementDriver"]),
        .library(name: "PlacementDriverClient", targets: ["PlacementDriverClient"]),
        .library(name: "Transport", targets: ["Transport"]),
        .library(name: "RangeServer", targets: ["RangeServer"]),
        .library(name: "Client", targets: ["Client"]),
        .executable(name: "esctl", targets: ["esctl"]),
        .executable(name: "es-perf", targets: ["es-perf"]),
        .executable(name: "elastic-stream", targets: ["elastic-stream"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        // Exact: the generated code in Sources/Wire/Generated comes from this version's protoc-gen-swift.
        .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", exact: "0.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    ],
    targets: [
        // The thin C shim over liburing, libnuma, libhugetlbfs and libxxhash. liburing.h is included only from the
        // .c file: Swift sees an opaque ring handle.
        .systemLibrary(name: "CLibURing", path: "CSupport/system/liburing", pkgConfig: "liburing",
                       providers: [.apt(["liburing-dev"])]),
        .systemLibrary(name: "CLibNUMA", path: "CSupport/system/libnuma", pkgConfig: "numa",
                       providers: [.apt(["libnuma-dev"])]),
        .systemLibrary(name: "CLibXXHash", path: "CSupport/system/libxxhash", pkgConfig: "libxxhash",
                       providers: [.apt(["libxxhash-dev"])]),
        .target(
            name: "CSupport",
            dependencies: ["CLibURing", "CLibNUMA", "CLibXXHash"],
            path: "CSupport",
            exclude: ["system"],
            cSettings: [.define("_GNU_SOURCE"), .unsafeFlags(["-O2"])],
            // libhugetlbfs ships no pkg-config file.
            linkerSettings: [.linkedLibrary("hugetlbfs")]
        ),
        // The seam: clock, files and connections as protocols. The reactor implements them with io_uring; a
        // deterministic simulator implements them for tests.
        .target(name: "Platform", swiftSettings: swiftSettings),
        .target(
            name: "Reactor",
            dependencies: ["CSupport", "Platform", .product(name: "Logging", package: "swift-log")],
            // The shard's state is reached only from its own thread (checked where it matters), so the runtime's
            // dynamic exclusivity checks on every access to it buy nothing on the hot path.
            swiftSettings: swiftSettings + [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),
        // The record batch format: builders into a caller's buffer, zero-copy validated views.
        .target(name: "Records", dependencies: ["CSupport"], swiftSettings: swiftSettings),
        // Frames, operation codes, error codes and the protobuf headers of every message.
        .target(
            name: "Wire",
            dependencies: ["CSupport", "Records", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["Proto"],
            swiftSettings: swiftSettings
        ),
        // The shard-local store: write-ahead log with group commit and crash recovery.
        .target(name: "Store", dependencies: ["Reactor", "Platform", "Records", "CSupport"],
                swiftSettings: swiftSettings),
        // The Raft core: pure (no I/O, no clock), driven by ticks, messages and proposals.
        .target(name: "Raft", swiftSettings: swiftSettings),
        // Frames over the reactor's TCP: a connection with a bounded send queue, and a multiplexed request client.
        .target(name: "Transport",
                dependencies: ["Reactor", "Platform", "Wire", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: swiftSettings),
        // The placement driver's replicated state machine (streams, ranges, servers, objects, ids) on Raft.
        // The one reader of the configuration files (TOML) and its value grammar, and the [reactor] table.
        .target(name: "Configuration",
                dependencies: ["Reactor", "Transport", .product(name: "TOMLKit", package: "TOMLKit")],
                swiftSettings: swiftSettings),
        // The client side of the placement driver protocol: what the SDK needs, without the state machine or Raft.
        .target(name: "PlacementDriverClient",
                dependencies: ["Wire", "Transport", "Reactor", "Platform",
                               .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                swiftSettings: swiftSettings),
        .target(name: "PlacementDriver",
                dependencies: ["PlacementDriverClient", "Configuration", "Raft", "Wire", "Transport", "Reactor", "Platform",
                               "CSupport", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: swiftSettings),
        // The range server: range replicas on the shard that owns each, served over the wire protocol.
        .target(name: "RangeServer",
                dependencies: ["Store", "Records", "Wire", "Transport", "PlacementDriver", "Configuration", "Reactor",
                               "Platform", "CSupport", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: swiftSettings),
        // The second backend of the seam: whole processes (nodes, clients) in one deterministic, seeded simulation
        // with virtual time, simulated disks and a simulated network, and the faults of each.
        .target(name: "Simulation", dependencies: ["Reactor", "Platform", "CSupport"], swiftSettings: swiftSettings),
        // The client SDK: streams, chasing write, failover, reads that span ranges.
        .target(name: "Client",
                dependencies: ["Records", "Wire", "Transport", "PlacementDriverClient", "Reactor", "Platform",
                               .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                swiftSettings: swiftSettings),
        // The server process: reactor, embedded placement driver member, range server.
        .executableTarget(name: "elastic-stream",
                          dependencies: ["PlacementDriver", "RangeServer", "Configuration", "Raft", "Reactor",
                                         .product(name: "Logging", package: "swift-log")],
                          swiftSettings: swiftSettings),
        // The command-line tool.
        .executableTarget(name: "esctl",
                          dependencies: ["Client", "PlacementDriverClient", "Records", "Wire", "Reactor",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "Logging", package: "swift-log")],
                          swiftSettings: swiftSettings),
        // Baselines for the benchmarks, in plain C over the same libraries: never linked into the engine.
        .target(name: "CBaselines", dependencies: ["CLibURing", "CLibXXHash"], path: "Perf/CBaselines",
                cSettings: [.define("_GNU_SOURCE"), .unsafeFlags(["-O2"])]),
        // Interposes malloc to count allocations per operation; linked into es-perf only.
        .target(name: "MallocCounter", path: "Perf/MallocCounter", cSettings: [.unsafeFlags(["-O2"])]),
        .executableTarget(
            name: "es-perf",
            dependencies: ["Reactor", "Configuration", "Platform", "CSupport", "CBaselines", "MallocCounter", "Records", "Wire", "Store",
                           "PlacementDriver", "Client"],
            path: "Perf/es-perf",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ReactorTests",
            dependencies: ["Reactor", "Configuration", "Platform", "CSupport", "TestSupport"],
            swiftSettings: swiftSettings
        ),
        // libFuzzer targets (Tests/Fuzz/run.sh builds them with -sanitize=fuzzer); a plain build makes replayers.
        .executableTarget(name: "fuzz-frame-decoder", dependencies: ["Wire"], path: "Tests/Fuzz/FrameDecoder",
                          swiftSettings: swiftSettings),
        .executableTarget(name: "fuzz-record-batch", dependencies: ["Records"], path: "Tests/Fuzz/RecordBatch",
                          swiftSettings: swiftSettings),
        // The cluster simulation: three nodes and two writers under faults, seed by seed (Tests/Simulation/run.sh).
        .executableTarget(name: "es-sim",
                          dependencies: ["Simulation", "Client", "RangeServer", "PlacementDriver", "Raft", "Store", "Transport",
                                         "Records", "Reactor", "CSupport", .product(name: "Logging", package: "swift-log")],
                          path: "Tests/Simulation/Runner", swiftSettings: swiftSettings),
        // Runs es-sim (built in release, in child processes) over 500 seeds, and checks a seed replays exactly.
        .testTarget(name: "SimulationTests", swiftSettings: swiftSettings),
        // Helpers shared by the test targets.
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: swiftSettings),
        .testTarget(name: "RecordsTests", dependencies: ["Records", "CSupport", "TestSupport"],
                    swiftSettings: swiftSettings),
        // The child process of the store's crash tests: appends until killed.
        .executableTarget(name: "store-crash-child", dependencies: ["Store", "Reactor", "Records"],
                          path: "Tests/StoreCrash", swiftSettings: swiftSettings),
        .testTarget(name: "StoreTests", dependencies: ["Store", "Reactor", "Platform", "CSupport", "TestSupport"],
                    swiftSettings: swiftSettings),
        .testTarget(name: "RaftTests", dependencies: ["Raft", "TestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "PlacementDriverTests", dependencies: ["PlacementDriver", "Wire", "Raft", "Reactor", "Platform",
                                                                  "TestSupport"],
                    swiftSettings: swiftSettings),
        .testTarget(name: "ClusterTests",
                    dependencies: ["Client", "RangeServer", "PlacementDriver", "Store", "Records", "Wire", "Transport",
                                   "Reactor", "Platform", "TestSupport"],
                    swiftSettings: swiftSettings),
        .testTarget(name: "WireTests", dependencies: ["Wire", "Records", "CSupport", "TestSupport"], swiftSettings: swiftSettings),
    ]
)
