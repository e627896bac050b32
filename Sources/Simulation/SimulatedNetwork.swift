import Platform
import Reactor

#if canImport(Glibc)
import Glibc
#endif

/// TCP between simulated processes: listeners by "host:port", connections as pairs of endpoints. Each direction of
/// a connection delivers its bytes in order, after a latency drawn per send; a blocked direction (a partition) holds
/// them until it heals. A process that dies closes its connections (peers read the end); bytes sent to a closed end
/// come back as a reset. Connections can be reset at random.
public final class SimulatedNetwork {
    unowned var simulator: Simulator!
    private var listeners: [String: SimulatedSocketListener] = [:]
    private var nextPort: UInt16 = 40_000
    /// Directions that deliver nothing: "fromHost>toHost".
    private var blocked: Set<String> = []
    /// Latency of one delivery, in nanoseconds.
    public var minLatency: UInt64 = 50_000
    public var maxLatency: UInt64 = 400_000
    /// Probability that a delivery takes 5 to 50 ms.
    public var slowRate = 0.0
    public private(set) var connectionsMade = 0
    /// Prints connection events (for diagnosing one seed).
    public var debug: ((String) -> Void)?
    public private(set) var resets = 0

    init() {}

    func latency() -> UInt64 {
        if simulator.chance(slowRate) { return simulator.between(5_000_000, 50_000_000) }
        return simulator.between(minLatency, maxLatency)
    }

    func tearDown() {
        for listener in Array(listeners.values) { listener.close() }
        listeners = [:]
        blocked = []
    }

    // MARK: Partitions

    public func isBlocked(from: String, to: String) -> Bool { !blocked.isEmpty && blocked.contains("\(from)>\(to)") }

    /// Stops (or restores) delivery from `from` to `to`; `bothWays` does the same for the other direction.
    public func block(from: String, to: String, bothWays: Bool = true) {
        blocked.insert("\(from)>\(to)")
        if bothWays { blocked.insert("\(to)>\(from)") }
        simulator.trace(10, UInt64(blocked.count))
    }

    public func healAll() {
        blocked.removeAll()
        simulator.trace(11)
    }

    public var partitioned: Bool { !blocked.isEmpty }

    // MARK: Resets

    /// Resets one established connection chosen at random (both ends fail their next receive and send).
    public func resetRandomConnection() {
        let open = simulator.processes.flatMap { $0.endpoints }.filter { !$0.closed && !$0.reset && $0.remote != nil }
        guard !open.isEmpty else { return }
        let endpoint = open[Int(simulator.below(UInt64(open.count)))]
        resets += 1
        simulator.trace(12, UInt64(endpoint.process.id))
        endpoint.receive(.reset)
        endpoint.remote?.receive(.reset)
    }

    // MARK: Listening and connecting

    func listen(host: String, port: UInt16, process: SimulatedProcess) throws(IOError) -> SimulatedSocketListener {
        var port = port
        if port == 0 {
            repeat {
                nextPort = nextPort == UInt16.max ? 40_000 : nextPort + 1
            } while listeners["\(host):\(nextPort)"] != nil
            port = nextPort
        }
        let key = "\(host):\(port)"
        if let existing = listeners[key], !existing.closed {
            throw IOError(.listen, .system(errno: EADDRINUSE), target: key)
        }
        let listener = SimulatedSocketListener(network: self, key: key, port: port, process: process)
        listeners[key] = listener
        return listener
    }

    func forget(_ listener: SimulatedSocketListener) {
        if listeners[listener.key] === listener { listeners[listener.key] = nil }
    }

    func connect(from process: SimulatedProcess, host: String, port: UInt16, on shard: Shard) async throws(IOError)
        -> SimulatedEndpoint
    {
        let key = "\(host):\(port)"
        try await process.park(for: latency(), operation: .connect)
        if isBlocked(from: process.host, to: host) || isBlocked(from: host, to: process.host) {
            // The SYN is lost; the kernel gives up after a while.
            try await process.park(for: 1_000_000_000, operation: .connect)
            debug?("\(process.name) -> \(key): timed out (partition)")
            throw IOError(.connect, .system(errno: ETIMEDOUT), target: key)
        }
        guard let listener = listeners[key], !listener.closed, listener.process.isAlive else {
            debug?("\(process.name) -> \(key): refused")
            throw IOError(.connect, .system(errno: ECONNREFUSED), target: key)
        }
        nextPort = nextPort == UInt16.max ? 40_000 : nextPort + 1
        let client = SimulatedEndpoint(network: self, process: process, host: process.host, peer: key)
        let server = SimulatedEndpoint(network: self, process: listener.process, host: host,
                                       peer: "\(process.host):\(nextPort)")
        client.remote = server
        server.remote = client
        process.endpoints.append(client)
        listener.process.endpoints.append(server)
        connectionsMade += 1
        simulator.trace(13, UInt64(process.id), UInt64(listener.process.id))
        listener.arrived(server)
        debug?("\(process.name) -> \(key): connected")
        return client
    }
}

/// What travels one direction of a connection.
enum Segment {
    case data([UInt8])
    case end
    case reset
}

/// One end of a simulated connection.
final class SimulatedEndpoint: SimulatedConnection {
    unowned let network: SimulatedNetwork
    unowned let process: SimulatedProcess
    let host: String
    let peer: String
    var remote: SimulatedEndpoint?

    private var inbound = FIFO<[UInt8]>()
    private var inboundOffset = 0
    private(set) var ended = false
    private(set) var reset = false
    private(set) var closed = false
    private var waiter: Waiter?

    /// Bytes on their way to `remote`, in order, each with its delivery time.
    private var outgoing = FIFO<(at: UInt64, segment: Segment)>()
    private var lastDelivery: UInt64 = 0
    private var pumping = false

    init(network: SimulatedNetwork, process: SimulatedProcess, host: String, peer: String) {
        self.network = network
        self.process = process
        self.host = host
        self.peer = peer
    }

    // MARK: Receiving

    func receive(_ segment: Segment) {
        switch segment {
        case .data(let bytes):
            if closed || reset {
                // Bytes for a closed socket: the kernel answers with a reset.
                if !reset { transmit(.reset) }
                return
            }
            inbound.push(bytes)
        case .end: ended = true
        case .reset: reset = true
        }
        waiter?.resume(true)
        waiter = nil
    }

    func receive(into buffer: UnsafeMutableRawBufferPointer) async throws(IOError) -> Int {
        while true {
            if closed { throw IOError(.recv, .system(errno: EBADF), target: peer) }
            if let first = inbound.first {
                let count = min(buffer.count, first.count - inboundOffset)
                first.withUnsafeBytes { source in
                    buffer.baseAddress!.copyMemory(from: source.baseAddress! + inboundOffset, byteCount: count)
                }
                inboundOffset += count
                if inboundOffset == first.count {
                    _ = inbound.pop()
                    inboundOffset = 0
                }
                return count
            }
            if reset { throw IOError(.recv, .system(errno: ECONNRESET), target: peer) }
            if ended { return 0 }
            if Task.isCancelled { throw IOError(.recv, .cancelled, target: peer) }
            let waiter = Waiter()
            self.waiter = waiter
            _ = await waiter.wait()
            if self.waiter === waiter { self.waiter = nil }
        }
    }

    // MARK: Sending

    func send(_ buffer: UnsafeRawBufferPointer) async throws(IOError) {
        if closed { throw IOError(.send, .system(errno: EBADF), target: peer) }
        if reset { throw IOError(.send, .system(errno: ECONNRESET), target: peer) }
        if ended && remote == nil { throw IOError(.send, .system(errno: EPIPE), target: peer) }
        guard buffer.count > 0 else { return }
        transmit(.data(Array(buffer)))
    }

    private func transmit(_ segment: Segment) {
        let simulator = network.simulator!
        let at = max(simulator.now &+ network.latency(), lastDelivery)
        lastDelivery = at
        outgoing.push((at, segment))
        if !pumping {
            pumping = true
            simulator.at(at) { [self] in deliverHead() }
        }
    }

    private func deliverHead() {
        let simulator = network.simulator!
        guard let head = outgoing.first else {
            pumping = false
            return
        }
        guard let remote else {
            outgoing.removeAll()
            pumping = false
            return
        }
        if network.isBlocked(from: host, to: remote.host) {
            // Held while the path is cut; TCP keeps retransmitting.
            simulator.after(20_000_000) { [self] in deliverHead() }
            return
        }
        _ = outgoing.pop()
        simulator.trace(14, UInt64(process.id))
        remote.receive(head.segment)
        if let next = outgoing.first {
            simulator.at(next.at) { [self] in deliverHead() }
        } else {
            pumping = false
        }
    }

    // MARK: Closing

    func close() {
        guard !closed else { return }
        network.debug?("\(process.name) closes its end of \(host) <-> \(peer)")
        closed = true
        waiter?.resume(true)
        waiter = nil
        if !reset { transmit(.end) }
        process.endpoints.removeAll { $0 === self }
    }

    /// The owning process died: the kernel closes the socket for it.
    func processDied() {
        guard !closed else { return }
        closed = true
        waiter = nil
        if !reset { transmit(.end) }
    }
}

/// A simulated listening socket.
final class SimulatedSocketListener: SimulatedListener {
    unowned let network: SimulatedNetwork
    let key: String
    let port: UInt16
    unowned let process: SimulatedProcess
    private var pending = FIFO<SimulatedEndpoint>()
    private var waiter: Waiter?
    private(set) var closed = false

    init(network: SimulatedNetwork, key: String, port: UInt16, process: SimulatedProcess) {
        self.network = network
        self.key = key
        self.port = port
        self.process = process
    }

    func arrived(_ endpoint: SimulatedEndpoint) {
        pending.push(endpoint)
        waiter?.resume(true)
        waiter = nil
    }

    func accept() async throws(IOError) -> any SimulatedConnection {
        while true {
            if closed { throw IOError(.accept, .system(errno: EBADF), target: key) }
            if let endpoint = pending.pop() {
                network.debug?("\(key) accepts \(endpoint.peer)")
                return endpoint
            }
            if Task.isCancelled {
                network.debug?("\(key) accept cancelled")
                throw IOError(.accept, .cancelled, target: key)
            }
            let waiter = Waiter()
            self.waiter = waiter
            _ = await waiter.wait()
            if self.waiter === waiter { self.waiter = nil }
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        network.forget(self)
        while let endpoint = pending.pop() { endpoint.close() }
        waiter?.resume(true)
        waiter = nil
    }
}
