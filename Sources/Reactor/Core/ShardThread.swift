import CSupport

#if canImport(Glibc)
import Glibc
#endif

/// A joinable OS thread running one closure. The reactor's own threads (one per shard, one stall detector) are made
/// here; nothing else in the engine starts a thread.
struct OSThread: @unchecked Sendable {
    private let handle: pthread_t

    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    static func start(name: String, _ body: @escaping @Sendable () -> Void) -> OSThread? {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var handle = pthread_t()
        let rc = pthread_create(&handle, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            return nil
        }
        _ = cs_set_thread_name(handle, String(name.prefix(15)))
        return OSThread(handle: handle)
    }

    /// Starts a thread nobody joins.
    static func startDetached(name: String, _ body: @escaping @Sendable () -> Void) {
        if let thread = start(name: name, body) { _ = pthread_detach(thread.handle) }
    }

    func join() {
        _ = pthread_join(handle, nil)
    }
}
