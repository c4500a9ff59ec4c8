//! A Device actor: one single-tenant executor slot on a worker (SPEC §2). Its
//! mailbox is the device's FIFO queue. Only its Worker talks to it; it is never
//! remotable.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use crate::protocol::DeviceInfo;

/// A device slot.
pub struct Device;

/// What a device is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Idle,
    Busy,
    Offline,
    Quarantined,
}

/// A device as its worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub info: DeviceInfo,
    pub state: DeviceState,
}

/// State of [`Device`].
pub struct DeviceActorState {
    info: DeviceInfo,
    state: DeviceState,
}

/// Messages of [`Device`].
pub enum DeviceMsg {
    /// Report what the device is and what it is doing.
    Status(RpcReplyPort<DeviceStatus>),
}

impl ractor::Message for DeviceMsg {}

impl Actor for Device {
    type Msg = DeviceMsg;
    type State = DeviceActorState;
    type Arguments = DeviceInfo;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        info: DeviceInfo,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(DeviceActorState {
            info,
            state: DeviceState::Idle,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DeviceMsg::Status(reply) => {
                let _ = reply.send(DeviceStatus {
                    info: state.info.clone(),
                    state: state.state,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_device_is_idle_and_reports_itself() {
        let info = DeviceInfo {
            id: "gpu0".into(),
            handle: "cuda:0".into(),
            capabilities: Default::default(),
        };
        let (dev, handle) = Actor::spawn(None, Device, info.clone()).await.unwrap();
        let status = ractor::call!(dev, DeviceMsg::Status).unwrap();
        assert_eq!(status.info, info);
        assert_eq!(status.state, DeviceState::Idle);
        dev.stop(None);
        handle.await.unwrap();
    }
}
