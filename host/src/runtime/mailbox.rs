//! An actor's mailbox: two lanes, ordinary messages and system messages, behind one lock,
//! and the actor's end that takes from them.
//!
//! Lanes:
//! - *Ordinary*: calls, casts, info messages (monitors' `down` included), links' exit
//!   signals and stop requests, in the order sent. Stops and exit signals stay here, in
//!   order with the messages sent before them: a `stop` after some casts lets those casts
//!   run first (OTP's `gen_server:stop` is a message in the same mailbox too), and an
//!   exit signal is never seen before a message its sender sent earlier (OTP's signal
//!   order between two processes). While suspended the actor still reads this lane, moving
//!   what it finds to its side queue, so a stop or an exit signal acts on a suspended actor
//!   without waiting for a `resume`.
//! - *System*: `suspend`, `resume`, `change_code`, `get_state`, `status`, … The actor
//!   takes a waiting system message before its next ordinary one (between callbacks, never
//!   during one; during a run of casts, before the next run: at most 64 casts, see
//!   [`super::actor`]), so an upgrade's `suspend` does not wait behind a backlog of casts,
//!   and its pause does not grow with the queue's depth. A flag beside the lock says whether
//!   the lane holds anything, so checking it before each message costs one atomic load.
//!
//! Invariants:
//! - Nothing is allocated until the first message arrives (an idle actor's mailbox is a
//!   few words inside its shared state): the lanes are `VecDeque`s, empty until used.
//! - The actor drains the ordinary lane a batch at a time: it swaps the shared queue with
//!   its own empty one under the lock, so a sender takes the lock once per message and the
//!   actor once per batch, and the two buffers trade places without reallocating.
//! - A sender wakes the actor only when it is parked waiting (its waker is taken, so a
//!   burst of sends costs one wake-up).
//! - Once the actor's end is dropped (the actor exited, or its task was cancelled) the
//!   mailbox is closed: sends fail, and whatever was queued is dropped outside the lock
//!   (with it any call's reply channel, so its caller hears "exited").
//!
//! What is tricky: the mailbox length is not counted here; senders count in
//! [`super::ActorShared`], the actor uncounts as it takes a message up. Moving a message
//! between the lanes, the actor's batch and its side queues changes nothing.

use super::actor::{Envelope, SystemRequest};
use super::{ActorRef, lock};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

/// The shared half of a mailbox, inside the actor's shared state.
pub(crate) struct Mailbox {
    /// Whether the system lane holds anything; written under the lock, read without it.
    system_waiting: AtomicBool,
    lanes: Mutex<Lanes>,
}

#[derive(Default)]
struct Lanes {
    ordinary: VecDeque<Envelope>,
    system: VecDeque<SystemRequest>,
    /// The actor's waker while it waits for a message.
    parked: Option<Waker>,
    closed: bool,
}

/// What the actor takes next.
pub(crate) enum Next {
    System(SystemRequest),
    Ordinary(Envelope),
}

impl Mailbox {
    /// An empty mailbox; allocates nothing.
    pub(crate) fn new() -> Mailbox {
        Mailbox {
            system_waiting: AtomicBool::new(false),
            lanes: Mutex::new(Lanes::default()),
        }
    }

    /// Queues an ordinary message; gives it back when the mailbox is closed.
    pub(crate) fn send(&self, envelope: Envelope) -> Result<(), Envelope> {
        let parked = {
            let mut lanes = lock(&self.lanes);
            if lanes.closed {
                return Err(envelope);
            }
            lanes.ordinary.push_back(envelope);
            lanes.parked.take()
        };
        if let Some(waker) = parked {
            waker.wake();
        }
        Ok(())
    }

    /// Queues a system message; gives it back when the mailbox is closed.
    pub(crate) fn send_system(&self, request: SystemRequest) -> Result<(), SystemRequest> {
        let parked = {
            let mut lanes = lock(&self.lanes);
            if lanes.closed {
                return Err(request);
            }
            lanes.system.push_back(request);
            self.system_waiting.store(true, Ordering::Release);
            lanes.parked.take()
        };
        if let Some(waker) = parked {
            waker.wake();
        }
        Ok(())
    }
}

/// The actor's end of its mailbox. Dropping it closes the mailbox.
pub(crate) struct Receiver {
    actor: ActorRef,
    /// Ordinary messages taken from the shared lane in one swap, in order.
    batch: VecDeque<Envelope>,
}

impl Receiver {
    /// The receiving end of `actor`'s mailbox (one per actor).
    pub(crate) fn new(actor: ActorRef) -> Receiver {
        Receiver {
            actor,
            batch: VecDeque::new(),
        }
    }

    fn mailbox(&self) -> &Mailbox {
        &self.actor.shared.mailbox
    }

    /// A waiting system message, if any; one atomic load when there is none.
    pub(crate) fn try_system(&mut self) -> Option<SystemRequest> {
        let mailbox = self.mailbox();
        if !mailbox.system_waiting.load(Ordering::Acquire) {
            return None;
        }
        let mut lanes = lock(&mailbox.lanes);
        Self::pop_system(mailbox, &mut lanes)
    }

    fn pop_system(mailbox: &Mailbox, lanes: &mut Lanes) -> Option<SystemRequest> {
        let request = lanes.system.pop_front();
        if lanes.system.is_empty() {
            mailbox.system_waiting.store(false, Ordering::Relaxed);
        }
        request
    }

    /// The next ordinary message if one is queued, without waiting (system messages are
    /// left where they are).
    pub(crate) fn try_ordinary(&mut self) -> Option<Envelope> {
        if let Some(envelope) = self.batch.pop_front() {
            return Some(envelope);
        }
        let mut lanes = lock(&self.actor.shared.mailbox.lanes);
        std::mem::swap(&mut self.batch, &mut lanes.ordinary);
        drop(lanes);
        self.batch.pop_front()
    }

    /// How many casts, at most `limit`, lead the messages already taken from the shared
    /// lane (no lock: only what the last swap brought).
    pub(crate) fn leading_casts(&self, limit: usize) -> usize {
        self.batch
            .iter()
            .take(limit)
            .take_while(|envelope| matches!(envelope, Envelope::Cast(_)))
            .count()
    }

    /// The next cast among those [`Receiver::leading_casts`] counted.
    pub(crate) fn pop_leading_cast(&mut self) -> Option<Vec<u8>> {
        match self.batch.front() {
            Some(Envelope::Cast(_)) => match self.batch.pop_front() {
                Some(Envelope::Cast(message)) => Some(message),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether a system message waits (to stop gathering a batch of casts for it).
    pub(crate) fn system_waiting(&self) -> bool {
        self.mailbox().system_waiting.load(Ordering::Acquire)
    }

    pub(crate) fn poll_next(&mut self, context: &mut Context<'_>) -> Poll<Next> {
        if let Some(request) = self.try_system() {
            return Poll::Ready(Next::System(request));
        }
        if let Some(envelope) = self.batch.pop_front() {
            return Poll::Ready(Next::Ordinary(envelope));
        }
        let mailbox = &self.actor.shared.mailbox;
        let mut lanes = lock(&mailbox.lanes);
        if let Some(request) = Self::pop_system(mailbox, &mut lanes) {
            return Poll::Ready(Next::System(request));
        }
        std::mem::swap(&mut self.batch, &mut lanes.ordinary);
        if let Some(envelope) = self.batch.pop_front() {
            return Poll::Ready(Next::Ordinary(envelope));
        }
        match &mut lanes.parked {
            Some(waker) if waker.will_wake(context.waker()) => {}
            parked => *parked = Some(context.waker().clone()),
        }
        Poll::Pending
    }

    /// The next message, a waiting system message first; waits for one.
    pub(crate) async fn next(&mut self) -> Next {
        std::future::poll_fn(|context| self.poll_next(context)).await
    }

    /// Frees the buffers of a drained mailbox (after a flood); a queue that holds
    /// messages keeps its buffer.
    pub(crate) fn shrink(&mut self) {
        if self.batch.is_empty() {
            self.batch = VecDeque::new();
        }
        let replaced = {
            let mut lanes = lock(&self.actor.shared.mailbox.lanes);
            let ordinary = if lanes.ordinary.is_empty() {
                Some(std::mem::take(&mut lanes.ordinary))
            } else {
                None
            };
            let system = if lanes.system.is_empty() {
                Some(std::mem::take(&mut lanes.system))
            } else {
                None
            };
            (ordinary, system)
        };
        drop(replaced);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let queued = {
            let mut lanes = lock(&self.actor.shared.mailbox.lanes);
            lanes.closed = true;
            self.actor
                .shared
                .mailbox
                .system_waiting
                .store(false, Ordering::Relaxed);
            (
                std::mem::take(&mut lanes.ordinary),
                std::mem::take(&mut lanes.system),
                lanes.parked.take(),
            )
        };
        // Dropped outside the lock: a reply channel's receiver may run code when told.
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        ActorOptions, Behaviour, BehaviourFactory, NativeFactory, PendingReplies, Runtime,
        send_suspend_all,
    };
    use super::*;
    use crate::plugin::{CallbackError, HostServices, Outputs, PluginIdentity};
    use graft_plugin::StopReason;
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Duration;

    fn cast(value: u8) -> Envelope {
        Envelope::Cast(vec![value])
    }

    fn cast_value(next: Next) -> u8 {
        match next {
            Next::Ordinary(Envelope::Cast(message)) => message[0],
            _ => panic!("expected a cast"),
        }
    }

    #[test]
    fn an_empty_mailbox_allocates_nothing() {
        let mailbox = Mailbox::new();
        let lanes = lock(&mailbox.lanes);
        assert_eq!((lanes.ordinary.capacity(), lanes.system.capacity()), (0, 0));
    }

    #[test]
    fn a_closed_mailbox_gives_messages_back() {
        let mailbox = Mailbox::new();
        lock(&mailbox.lanes).closed = true;
        assert!(mailbox.send(cast(1)).is_err());
        let (reply, _receiver) = tokio::sync::oneshot::channel();
        assert!(mailbox.send_system(SystemRequest::Suspend(reply)).is_err());
        assert!(!mailbox.system_waiting.load(Ordering::Relaxed));
    }

    #[test]
    fn ordinary_messages_keep_their_order_and_system_ones_go_first() {
        let mailbox = Mailbox::new();
        for value in 0..5 {
            mailbox.send(cast(value)).unwrap_or_else(|_| panic!("open"));
        }
        let (reply, _receiver) = tokio::sync::oneshot::channel();
        mailbox
            .send_system(SystemRequest::Suspend(reply))
            .unwrap_or_else(|_| panic!("open"));
        let mut lanes = lock(&mailbox.lanes);
        let mut batch = VecDeque::new();
        assert!(matches!(
            Receiver::pop_system(&mailbox, &mut lanes),
            Some(SystemRequest::Suspend(_))
        ));
        assert!(!mailbox.system_waiting.load(Ordering::Relaxed));
        std::mem::swap(&mut batch, &mut lanes.ordinary);
        let order: Vec<u8> = batch
            .into_iter()
            .map(|envelope| cast_value(Next::Ordinary(envelope)))
            .collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    /// A host-native behaviour that records each cast's number, and blocks in a cast of
    /// `u64::MAX` until `gate` lets it go.
    struct Recorder {
        handled: Arc<StdMutex<Vec<u64>>>,
        gate: Arc<StdMutex<Option<std::sync::mpsc::Receiver<()>>>>,
    }

    impl Behaviour for Recorder {
        fn identity(&self) -> Option<&PluginIdentity> {
            None
        }
        fn handle_call(
            &mut self,
            _: &[u8],
            _: u64,
            _: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            Ok(Outputs {
                reply: Some(Vec::new()),
                ..Outputs::default()
            })
        }
        fn handle_cast(
            &mut self,
            message: &[u8],
            _: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            let number = u64::from_le_bytes(message.try_into().expect("eight bytes"));
            if number == u64::MAX {
                if let Some(gate) = lock(&self.gate).take() {
                    let _ = gate.recv();
                }
            } else {
                lock(&self.handled).push(number);
            }
            Ok(Outputs::default())
        }
        fn handle_info(
            &mut self,
            _: u32,
            _: &[u8],
            _: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            Ok(Outputs::default())
        }
        fn handle_continue(
            &mut self,
            _: &[u8],
            _: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            Ok(Outputs::default())
        }
        fn terminate(&mut self, _: &StopReason, _: &dyn HostServices) -> Result<(), CallbackError> {
            Ok(())
        }
        fn encode_state(&mut self) -> Result<Vec<u8>, CallbackError> {
            Ok(Vec::new())
        }
    }

    async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        condition()
    }

    const PATIENCE: Duration = Duration::from_secs(60);

    /// The backlog of casts behind which the suspend is sent.
    const BACKLOG: u64 = 100_000;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_suspend_sent_behind_a_backlog_of_casts_is_handled_before_them() {
        let handled = Arc::new(StdMutex::new(Vec::new()));
        let (release, gate) = std::sync::mpsc::channel();
        let gate = Arc::new(StdMutex::new(Some(gate)));
        let factory = {
            let handled = Arc::clone(&handled);
            NativeFactory(move |_: &[u8], _: &dyn HostServices| {
                let recorder = Recorder {
                    handled: Arc::clone(&handled),
                    gate: Arc::clone(&gate),
                };
                Ok((Box::new(recorder) as Box<dyn Behaviour>, Outputs::default()))
            })
        };
        let runtime = Runtime::new();
        let actor = runtime
            .spawn(ActorOptions::new(Arc::new(factory), Vec::new()))
            .await
            .expect("the recorder starts");
        // No deadline: the held callback lasts as long as this test needs.
        actor.set_callback_timeout(None);

        // The actor is held inside a callback while the backlog and the suspend queue up.
        actor.cast(u64::MAX.to_le_bytes().to_vec());
        assert!(eventually(|| actor.mailbox_length() == 0).await);
        for number in 0..BACKLOG {
            actor.cast(number.to_le_bytes().to_vec());
        }
        let suspending = send_suspend_all(std::slice::from_ref(&actor));
        let status = PendingReplies::send(std::slice::from_ref(&actor), "status", |_, reply| {
            SystemRequest::Status(reply)
        });
        release.send(()).expect("the held callback waits");

        let suspended = suspending.collect(PATIENCE).await;
        assert!(matches!(suspended[..], [Ok(())]), "{suspended:?}");
        let status = status.collect(PATIENCE).await.remove(0).expect("a status");
        assert!(status.suspended);
        // Suspended before any of the backlog ran: nothing of it has been handled, and
        // all of it is still counted.
        assert_eq!(lock(&handled).len(), 0);
        assert_eq!(status.mailbox_length, BACKLOG as usize);
        assert_eq!(actor.mailbox_length(), BACKLOG as usize);

        // After `resume` the backlog runs, all of it, in the order sent.
        actor.resume(PATIENCE).await.expect("resumed");
        assert!(eventually(|| actor.mailbox_length() == 0).await);
        actor
            .call(Vec::new(), PATIENCE)
            .await
            .expect("the actor answers after its backlog");
        {
            let handled = lock(&handled);
            assert_eq!(handled.len(), BACKLOG as usize);
            assert!(handled.iter().copied().eq(0..BACKLOG), "in the order sent");
        }
        actor.stop(StopReason::Normal, Some(PATIENCE)).await;
    }

    /// Records casts (their first byte) and continuations (as 255); the cast `5` asks for
    /// a continuation, the cast `9` stops the actor, the cast `100` waits for `gate`.
    struct Continuer {
        handled: Arc<StdMutex<Vec<u8>>>,
        gate: Arc<StdMutex<Option<std::sync::mpsc::Receiver<()>>>>,
    }

    impl Behaviour for Continuer {
        fn identity(&self) -> Option<&PluginIdentity> {
            None
        }
        fn handle_call(
            &mut self,
            _: &[u8],
            _: u64,
            _: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            Ok(Outputs {
                reply: Some(Vec::new()),
                ..Outputs::default()
            })
        }
        fn handle_cast(
            &mut self,
            message: &[u8],
            _: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            if message[0] == 100 {
                if let Some(gate) = lock(&self.gate).take() {
                    let _ = gate.recv();
                }
                return Ok(Outputs::default());
            }
            lock(&self.handled).push(message[0]);
            Ok(Outputs {
                continue_with: (message[0] == 5).then(Vec::new),
                stop: (message[0] == 9).then_some(StopReason::Normal),
                ..Outputs::default()
            })
        }
        fn handle_info(
            &mut self,
            _: u32,
            _: &[u8],
            _: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            Ok(Outputs::default())
        }
        fn handle_continue(
            &mut self,
            _: &[u8],
            _: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            lock(&self.handled).push(255);
            Ok(Outputs::default())
        }
        fn terminate(&mut self, _: &StopReason, _: &dyn HostServices) -> Result<(), CallbackError> {
            Ok(())
        }
        fn encode_state(&mut self) -> Result<Vec<u8>, CallbackError> {
            Ok(Vec::new())
        }
    }

    /// Casts queued together run in one run; a continuation asked for in the middle of it
    /// runs before the next cast, and a stop ends the actor with the casts behind it
    /// unhandled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_continuation_or_a_stop_in_a_run_of_casts_goes_before_the_rest() {
        let handled = Arc::new(StdMutex::new(Vec::new()));
        let (release, gate) = std::sync::mpsc::channel();
        let gate = Arc::new(StdMutex::new(Some(gate)));
        let factory = {
            let handled = Arc::clone(&handled);
            NativeFactory(move |_: &[u8], _: &dyn HostServices| {
                let continuer = Continuer {
                    handled: Arc::clone(&handled),
                    gate: Arc::clone(&gate),
                };
                Ok((
                    Box::new(continuer) as Box<dyn Behaviour>,
                    Outputs::default(),
                ))
            })
        };
        let runtime = Runtime::new();
        let actor = runtime
            .spawn(ActorOptions::new(Arc::new(factory), Vec::new()))
            .await
            .expect("the continuer starts");
        actor.set_callback_timeout(None);
        // Held in a callback while the casts queue up, so that they are taken together.
        actor.cast(vec![100]);
        assert!(eventually(|| actor.mailbox_length() == 0).await);
        for value in 0..12_u8 {
            actor.cast(vec![value]);
        }
        assert_eq!(actor.mailbox_length(), 12);
        release.send(()).expect("the held callback waits");
        assert_eq!(actor.exited().await, StopReason::Normal);
        assert_eq!(*lock(&handled), vec![0, 1, 2, 3, 4, 5, 255, 6, 7, 8, 9]);
        assert_eq!(actor.mailbox_length(), 2, "the casts after the stop count");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_still_ends_a_suspended_actor_and_waits_behind_earlier_casts() {
        let handled = Arc::new(StdMutex::new(Vec::new()));
        let factory: Arc<dyn BehaviourFactory> = {
            let handled = Arc::clone(&handled);
            Arc::new(NativeFactory(move |_: &[u8], _: &dyn HostServices| {
                let recorder = Recorder {
                    handled: Arc::clone(&handled),
                    gate: Arc::new(StdMutex::new(None)),
                };
                Ok((Box::new(recorder) as Box<dyn Behaviour>, Outputs::default()))
            }))
        };
        let runtime = Runtime::new();
        let options = || ActorOptions::new(Arc::clone(&factory), Vec::new());
        // Running: the casts sent before the stop are handled before it.
        let actor = runtime.spawn(options()).await.expect("started");
        for number in 0..100_u64 {
            actor.cast(number.to_le_bytes().to_vec());
        }
        let reason = actor.stop(StopReason::Shutdown(None), Some(PATIENCE)).await;
        assert_eq!(reason, StopReason::Shutdown(None));
        assert!(lock(&handled).iter().copied().eq(0..100));
        // Suspended: a stop still ends it (the casts before it wait and are dropped).
        let actor = runtime.spawn(options()).await.expect("started");
        actor.suspend(PATIENCE).await.expect("suspended");
        for number in 100..200_u64 {
            actor.cast(number.to_le_bytes().to_vec());
        }
        let reason = actor.stop(StopReason::Shutdown(None), Some(PATIENCE)).await;
        assert_eq!(reason, StopReason::Shutdown(None));
        assert_eq!(lock(&handled).len(), 100);
    }
}
