//! What the actors' tests share: a probe actor that stands in for an
//! actor's peer (a worker for a device, a master for a worker or a session)
//! and forwards the messages it picks to a channel the test awaits, and the
//! assignments they send.

use std::marker::PhantomData;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::protocol::{ExecutorSpec, FrameRange, IdRange, TaskSpec};

/// Attempt 1 of `task` of `session`: frames `0..frames` on `device`, IDs
/// from `task * 1000`.
pub(crate) fn task_spec(
    session: &str,
    task: u64,
    device: &str,
    frames: u64,
    executor: ExecutorSpec,
) -> TaskSpec {
    TaskSpec {
        session: session.into(),
        session_name: session.into(),
        task,
        attempt: 1,
        frames: FrameRange {
            start: 0,
            end: frames,
        },
        ids: IdRange {
            lo: task * 1000,
            hi: task * 1000 + frames,
        },
        device: device.into(),
        executor,
        timeout_ms: 60_000,
        items: vec![],
        correlation_id: String::new(),
    }
}

/// Receives `M`; forwards what `pick` returns for it.
pub(crate) struct Probe<M, T>(PhantomData<fn(M) -> T>);

/// A probe for messages `M`, and the channel of what `pick` keeps of them.
pub(crate) async fn probe<M, T>(pick: fn(M) -> Option<T>) -> (ActorRef<M>, UnboundedReceiver<T>)
where
    M: ractor::Message,
    T: Send + 'static,
{
    let (tx, rx) = unbounded_channel();
    let (probe, _) = Actor::spawn(None, Probe(PhantomData), (tx, pick))
        .await
        .expect("the probe starts");
    (probe, rx)
}

impl<M, T> Actor for Probe<M, T>
where
    M: ractor::Message,
    T: Send + 'static,
{
    type Msg = M;
    type State = (UnboundedSender<T>, fn(M) -> Option<T>);
    type Arguments = (UnboundedSender<T>, fn(M) -> Option<T>);

    async fn pre_start(
        &self,
        _myself: ActorRef<M>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<M>,
        msg: M,
        (tx, pick): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = pick(msg) {
            let _ = tx.send(t);
        }
        Ok(())
    }
}
