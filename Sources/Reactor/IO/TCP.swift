import CSupport
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// A TCP connection on one shard; data moves through the shard's ring.
public final class TCPConnection: ShardConnection {
    public let descriptor: Int32
    public let peer: String
    let shard: Shard
    /// The simulator's connection, in a simulated reactor (`descriptor` is then -1).
    let simulated: (any SimulatedConnection)?
    private var closed = false

    init(descriptor: Int32, peer: String, shard: Shard) {
        self.descriptor = descriptor
        self.peer = peer
        self.shard = shard
        self.simulated = nil
        _ = cs_tcp_nodelay(descriptor)
    }

    init(simulated: any SimulatedConnection, shard: Shard) {
        self.descriptor = -1
        self.peer = simulated.peer
        self.shard = shard
        self.simulated = simulated
    }

    deinit {
        if !closed {
            if let simulated { simulated.close() } else { Glibc.close(descriptor) }
        }
    }

    static func connect(host: String, port: UInt16, on shard: Shard) async throws(IOError) -> TCPConnection {
        let peer = "\(host):\(port)"
        let fd = try await shard.perform(.socket, target: peer) { ring, userData, _ in
            cs_prep_socket(ring, AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, userData)
        }
        let connection = TCPConnection(descriptor: fd, peer: peer, shard: shard)
        // The address lives in the request's scratch memory until the request completes.
        _ = try await shard.perform(.connect, target: peer) { ring, userData, scratch in
            let length = cs_sockaddr_ipv4(host, port, scratch)
            if length < 0 { return length }
            return cs_prep_connect(ring, fd, scratch, UInt32(length), userData)
        }
        return connection
    }

    private func checkOpen(_ operation: IOOperation) throws(IOError) {
        if closed { throw IOError(operation, .system(errno: EBADF), target: peer) }
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) async throws(IOError) -> Int {
        try checkOpen(.recv)
        if let simulated { return try await simulated.receive(into: buffer) }
        let fd = descriptor
        let result = try await shard.perform(.recv, target: peer) { ring, userData, _ in
            cs_prep_recv(ring, fd, buffer.baseAddress, UInt32(buffer.count), userData)
        }
        return Int(result)
    }

    public func send(_ buffer: UnsafeRawBufferPointer) async throws(IOError) {
        try checkOpen(.send)
        if let simulated { return try await simulated.send(buffer) }
        let fd = descriptor
        var sent = 0
        while sent < buffer.count {
            let rest = UnsafeRawBufferPointer(rebasing: buffer[sent...])
            let result = try await shard.perform(.send, target: peer) { ring, userData, _ in
                cs_prep_send(ring, fd, rest.baseAddress, UInt32(rest.count), userData)
            }
            sent += Int(result)
        }
    }

    /// Shuts the connection down (which ends any receive or send still waiting on it) and closes the descriptor.
    public func close() async throws(IOError) {
        try checkOpen(.close)
        closed = true
        if let simulated { return simulated.close() }
        _ = Glibc.shutdown(descriptor, Int32(SHUT_RDWR))
        if Glibc.close(descriptor) != 0 { throw IOError(.close, .system(errno: Glibc.errno), target: peer) }
    }
}

@available(*, unavailable)
extension TCPConnection: Sendable {}

/// A listening TCP socket on one shard, with SO_REUSEPORT so that every shard can listen on the same port and the
/// kernel spreads connections among them. Accepts with one multishot request; accepted connections wait in a bounded
/// backlog (`backlogLimit`), and past it new ones are closed at once rather than queued without bound.
public final class TCPListener: ShardListener, MultishotHandler {
    public let descriptor: Int32
    public let port: UInt16
    public let host: String
    let shard: Shard
    public let backlogLimit: Int
    private var ready: [Int32] = []
    private var waiter: UnsafeContinuation<Void, Never>?
    private var acceptUserData: UInt64?
    private var failure: IOError?
    private var closed = false
    /// Connections closed because the backlog was full.
    public private(set) var refused = 0
    /// The simulator's listener, in a simulated reactor (`descriptor` is then -1).
    let simulated: (any SimulatedListener)?

    init(host: String, simulated: any SimulatedListener, on shard: Shard) {
        self.descriptor = -1
        self.port = simulated.port
        self.host = host
        self.backlogLimit = 1024
        self.shard = shard
        self.simulated = simulated
    }

    init(host: String, port: UInt16, reusePort: Bool, backlogLimit: Int = 1024, on shard: Shard) throws(IOError) {
        guard shard.isCurrent else {
            throw IOError(.listen, .wrongShard(expected: shard.index, actual: Int(cs_current_shard())),
                          target: "\(host):\(port)")
        }
        var bound: UInt16 = 0
        let fd = cs_tcp_listen(host, port, reusePort, 1024, &bound)
        if fd < 0 { throw IOError(.listen, .system(errno: -fd), target: "\(host):\(port)") }
        self.descriptor = fd
        self.port = bound
        self.host = host
        self.backlogLimit = backlogLimit
        self.shard = shard
        self.simulated = nil
        do {
            try arm()
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    deinit {
        if let simulated {
            if !closed { simulated.close() }
            return
        }
        for fd in ready { Glibc.close(fd) }
        if !closed {
            // The armed accept holds this listener only weakly; cancel it so the kernel lets go of the socket.
            if let acceptUserData, shard.isCurrent { shard.cancel(acceptUserData) }
            Glibc.close(descriptor)
        }
    }

    private func arm() throws(IOError) {
        let fd = descriptor
        let userData = try shard.startRequest(.accept, target: "\(host):\(port)", checkCancellation: false) {
            ring, userData, _ in cs_prep_accept_multishot(ring, fd, userData)
        }
        shard.completions.setWaiter(userData, .multishot(WeakMultishotHandler(handler: self)))
        acceptUserData = userData
    }

    func complete(result: Int32, more: Bool) {
        if result >= 0 {
            if closed || ready.count >= backlogLimit {
                Glibc.close(result)
                refused += 1
            } else {
                ready.append(result)
            }
        } else if result != -ECANCELED {
            failure = IOError(.accept, .system(errno: -result), target: "\(host):\(port)")
        }
        if !more {
            acceptUserData = nil
            // The kernel ends a multishot accept on some errors (EMFILE, ENOBUFS); `accept()` re-arms it.
        }
        wakeWaiter()
    }

    func wakeWaiter() {
        shard.preconditionOnShard()
        if let waiter {
            self.waiter = nil
            waiter.resume()
        }
    }

    public func accept() async throws(IOError) -> TCPConnection {
        if let simulated {
            if closed { throw IOError(.accept, .system(errno: EBADF), target: "\(host):\(port)") }
            return TCPConnection(simulated: try await simulated.accept(), shard: shard)
        }
        while true {
            if !ready.isEmpty {
                return TCPConnection(descriptor: ready.removeFirst(), peer: "accepted on \(port)", shard: shard)
            }
            if let failure {
                self.failure = nil
                throw failure
            }
            if closed { throw IOError(.accept, .system(errno: EBADF), target: "\(host):\(port)") }
            if acceptUserData == nil { try arm() }
            if Task.isCancelled { throw IOError(.accept, .cancelled, target: "\(host):\(port)") }
            precondition(waiter == nil, "only one task may wait in accept() at a time")
            await withTaskCancellationHandler {
                await withUnsafeContinuation { continuation in
                    // Checked again here: the await may have hopped while a connection arrived.
                    if !ready.isEmpty || failure != nil || closed || Task.isCancelled {
                        continuation.resume()
                    } else {
                        waiter = continuation
                    }
                }
            } onCancel: { [shard, listener = ShardBound(self)] in
                // Wake the waiter on its shard; it sees the cancellation and throws.
                shard.post { listener.value.wakeWaiter() }
            }
        }
    }

    public func close() async throws(IOError) {
        guard !closed else { return }
        closed = true
        if let simulated { return simulated.close() }
        if let acceptUserData { shard.cancel(acceptUserData) }
        for fd in ready { Glibc.close(fd) }
        ready.removeAll()
        wakeWaiter()
        if Glibc.close(descriptor) != 0 {
            throw IOError(.close, .system(errno: Glibc.errno), target: "\(host):\(port)")
        }
    }
}

@available(*, unavailable)
extension TCPListener: Sendable {}
