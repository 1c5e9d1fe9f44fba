import NIOCore

/// A timer for a deadline that moves often and mostly later — a connection's idle or
/// header deadline, a stream's idle deadline — bound to one event loop. Moving the
/// deadline later costs nothing: the task already scheduled, when it comes due early,
/// schedules itself again for what is left. Only a deadline earlier than the scheduled
/// task schedules anew. (NIO's scheduleTask allocates a task, a promise and a future;
/// scheduling and cancelling per request was a third of the proxy's allocations.)
/// Its owner calls `cancel()` when it goes away; `fire` should not hold its owner
/// strongly.
final class DeadlineTimer {
    private let loop: EventLoop
    private let fire: () -> Void
    private var deadline: NIODeadline?
    private var task: Scheduled<Void>?
    private var taskDue = NIODeadline.distantFuture

    init(on loop: EventLoop, fire: @escaping () -> Void) {
        self.loop = loop
        self.fire = fire
    }

    /// Fires once `deadline` has passed, unless set again first; nil: not at all.
    func set(_ deadline: NIODeadline?) {
        self.deadline = deadline
        // With no deadline a pending task is left to come due and find nothing to do:
        // cheaper than cancelling, when the next request sets one again.
        guard let deadline, task == nil || deadline < taskDue else { return }
        schedule(deadline)
    }

    /// Fires in `amount` from now.
    func set(in amount: TimeAmount) { set(.now() + amount) }

    func cancel() {
        deadline = nil
        task?.cancel()
        task = nil
    }

    private func schedule(_ due: NIODeadline) {
        task?.cancel()
        taskDue = due
        task = loop.assumeIsolated().scheduleTask(deadline: due) { self.due() }
    }

    private func due() {
        task = nil
        guard let deadline else { return }
        if deadline <= .now() {
            self.deadline = nil
            fire()
        } else {
            schedule(deadline)
        }
    }
}
