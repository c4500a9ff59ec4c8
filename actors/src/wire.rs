//! rmp-serde encoding of the cross-node messages, with a depth limit, and the
//! ractor `Message` impls of the two remotable actors (Master, Worker).
//!
//! ractor's `deserialize` must return a value: bytes that do not decode become
//! a `Malformed` message, which the receiving actor counts and logs. Nothing
//! here panics on bytes from the network.

use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{Message, RpcReplyPort};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::master::MasterMsg;
use crate::worker::WorkerMsg;

/// Deepest nesting accepted when decoding a network message.
pub const MAX_DEPTH: usize = 32;

const VARIANT_TO_MASTER: &str = "orch.to_master";
const VARIANT_TO_WORKER: &str = "orch.to_worker";
const VARIANT_ADMIN: &str = "orch.admin";
const VARIANT_EVENTS: &str = "orch.events";

/// Encode a value for the wire (field names kept, so that fields can be added).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map_err(|e| format!("cannot encode message: {e}"))
}

/// Decode bytes from the network, refusing nesting deeper than [`MAX_DEPTH`]
/// and any length that more than the bytes left could not hold.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let malformed = |e: &dyn std::fmt::Display| {
        let name = std::any::type_name::<T>();
        let name = name.rsplit("::").next().unwrap_or("message");
        format!("malformed `{name}` ({} bytes): {e}", bytes.len())
    };
    check_lengths(bytes).map_err(|e| malformed(&e))?;
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de).map_err(|e| malformed(&e))
}

/// Walk the MessagePack value at the start of `bytes` and refuse any length
/// header that the bytes after it cannot fill: an array or map of more
/// elements than bytes left (each takes at least one), a string, binary or
/// extension longer than what follows. Decoders reserve room for what a
/// header declares (serde caps it at 1 MiB per sequence); after this check
/// what they reserve is bounded by the message's own size. Linear, no
/// recursion.
pub fn check_lengths(bytes: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    // Values still to read.
    let mut pending: u64 = 1;
    let n = bytes.len();
    let take = |at: &mut usize, k: usize| -> Result<u64, String> {
        if *at + k > n {
            return Err(format!("ends inside a header at byte {at}"));
        }
        let mut v = 0u64;
        for b in &bytes[*at..*at + k] {
            v = (v << 8) | u64::from(*b);
        }
        *at += k;
        Ok(v)
    };
    while pending > 0 {
        if at >= n {
            return Err(format!(
                "ends at byte {at} with {pending} values still to come"
            ));
        }
        let head = at;
        let b = bytes[at];
        at += 1;
        pending -= 1;
        // (bytes of payload to skip, values that follow)
        let (skip, values): (u64, u64) = match b {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(b & 0x0f)),
            0x90..=0x9f => (0, u64::from(b & 0x0f)),
            0xa0..=0xbf => (u64::from(b & 0x1f), 0),
            0xc4 | 0xd9 => (take(&mut at, 1)?, 0),
            0xc5 | 0xda => (take(&mut at, 2)?, 0),
            0xc6 | 0xdb => (take(&mut at, 4)?, 0),
            0xc7 => (take(&mut at, 1)? + 1, 0),
            0xc8 => (take(&mut at, 2)? + 1, 0),
            0xc9 => (take(&mut at, 4)? + 1, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, take(&mut at, 2)?),
            0xdd => (0, take(&mut at, 4)?),
            0xde => (0, 2 * take(&mut at, 2)?),
            0xdf => (0, 2 * take(&mut at, 4)?),
            0xc1 => return Err(format!("byte 0xc1 (never used) at {head}")),
        };
        let left = (n - at) as u64;
        if skip > left {
            return Err(format!(
                "a value at byte {head} declares {skip} bytes but {left} follow"
            ));
        }
        at += skip as usize;
        pending += values;
        if pending > (n - at) as u64 {
            return Err(format!(
                "a value at byte {head} declares more elements than the {} bytes left could hold",
                n - at
            ));
        }
    }
    Ok(())
}

fn cast(variant: &str, args: Vec<u8>) -> SerializedMessage {
    SerializedMessage::Cast {
        variant: variant.to_string(),
        args,
        metadata: None,
    }
}

/// Typed reply port -> byte reply port (the caller's side of a remote call).
fn port_to_bytes<T: DeserializeOwned + Send + 'static>(
    port: RpcReplyPort<T>,
) -> RpcReplyPort<Vec<u8>> {
    let (tx, rx) = ractor::concurrency::oneshot::<Vec<u8>>();
    let timeout = port.get_timeout();
    tokio::spawn(async move {
        let bytes = match timeout {
            Some(t) => tokio::time::timeout(t, rx).await.ok().and_then(Result::ok),
            None => rx.await.ok(),
        };
        if let Some(bytes) = bytes {
            match decode::<T>(&bytes) {
                Ok(value) => {
                    let _ = port.send(value);
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::WIRE_DECODE_ERRORS).increment(1);
                    tracing::warn!(error = %e, "dropped a malformed reply");
                }
            }
        }
    });
    match timeout {
        Some(t) => RpcReplyPort::from((tx, t)),
        None => RpcReplyPort::from(tx),
    }
}

/// Byte reply port -> typed reply port (the callee's side of a remote call).
fn port_from_bytes<T: Serialize + Send + 'static>(port: RpcReplyPort<Vec<u8>>) -> RpcReplyPort<T> {
    let (tx, rx) = ractor::concurrency::oneshot::<T>();
    let timeout = port.get_timeout();
    tokio::spawn(async move {
        let value = match timeout {
            Some(t) => tokio::time::timeout(t, rx).await.ok().and_then(Result::ok),
            None => rx.await.ok(),
        };
        if let Some(value) = value {
            match encode(&value) {
                Ok(bytes) => {
                    let _ = port.send(bytes);
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a reply"),
            }
        }
    });
    match timeout {
        Some(t) => RpcReplyPort::from((tx, t)),
        None => RpcReplyPort::from(tx),
    }
}

fn unexpected(what: &str, msg: &SerializedMessage) -> String {
    match msg {
        SerializedMessage::Cast { variant, .. } => {
            format!("unknown cast `{variant}` for {what}")
        }
        SerializedMessage::Call { variant, .. } => {
            format!("unknown call `{variant}` for {what}")
        }
        SerializedMessage::CallReply(..) => format!("unexpected call reply for {what}"),
    }
}

impl Message for MasterMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            MasterMsg::Worker(m) => Ok(cast(
                VARIANT_TO_MASTER,
                encode(&m).map_err(|_| BoxedDowncastErr)?,
            )),
            MasterMsg::Admin(req, reply) | MasterMsg::RemoteAdmin(req, reply) => {
                Ok(SerializedMessage::Call {
                    variant: VARIANT_ADMIN.to_string(),
                    args: encode(&req).map_err(|_| BoxedDowncastErr)?,
                    reply: port_to_bytes(reply),
                    metadata: None,
                })
            }
            // Local-only messages never leave the node.
            _ => Err(BoxedDowncastErr),
        }
    }

    fn deserialize(msg: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        Ok(match msg {
            SerializedMessage::Cast { variant, args, .. } if variant == VARIANT_TO_MASTER => {
                match decode(&args) {
                    Ok(m) => MasterMsg::Worker(m),
                    Err(e) => MasterMsg::Malformed(e),
                }
            }
            SerializedMessage::Call {
                variant,
                args,
                reply,
                ..
            } if variant == VARIANT_ADMIN => match decode(&args) {
                Ok(req) => MasterMsg::RemoteAdmin(req, port_from_bytes(reply)),
                Err(e) => MasterMsg::Malformed(e),
            },
            other => MasterMsg::Malformed(unexpected("master", &other)),
        })
    }
}

impl Message for WorkerMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            WorkerMsg::Master(m) => Ok(cast(
                VARIANT_TO_WORKER,
                encode(&m).map_err(|_| BoxedDowncastErr)?,
            )),
            _ => Err(BoxedDowncastErr),
        }
    }

    fn deserialize(msg: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        Ok(match msg {
            SerializedMessage::Cast { variant, args, .. } if variant == VARIANT_TO_WORKER => {
                match decode(&args) {
                    Ok(m) => WorkerMsg::Master(m),
                    Err(e) => WorkerMsg::Malformed(e),
                }
            }
            other => WorkerMsg::Malformed(unexpected("worker", &other)),
        })
    }
}

impl Message for crate::events::EventsMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            Self::Events(events) => Ok(cast(
                VARIANT_EVENTS,
                encode(&events).map_err(|_| BoxedDowncastErr)?,
            )),
            Self::Malformed(_) => Err(BoxedDowncastErr),
        }
    }

    fn deserialize(msg: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        Ok(match msg {
            SerializedMessage::Cast { variant, args, .. } if variant == VARIANT_EVENTS => {
                match decode(&args) {
                    Ok(events) => Self::Events(events),
                    Err(e) => Self::Malformed(e),
                }
            }
            other => Self::Malformed(unexpected("events", &other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;
    use proptest::prelude::*;

    fn cap_value() -> impl Strategy<Value = CapValue> {
        prop_oneof![
            any::<bool>().prop_map(CapValue::Bool),
            any::<i64>().prop_map(CapValue::Int),
            "[a-z0-9]{0,12}".prop_map(CapValue::Str),
            proptest::collection::vec("[a-z]{1,6}", 0..4).prop_map(CapValue::List),
        ]
    }

    fn caps() -> impl Strategy<Value = Capabilities> {
        proptest::collection::btree_map("[a-z_]{1,8}", cap_value(), 0..5)
    }

    fn to_master() -> impl Strategy<Value = ToMaster> {
        let device =
            ("[a-z0-9-]{1,10}", "[a-z0-9:]{0,10}", caps()).prop_map(|(id, handle, c)| DeviceInfo {
                id,
                handle,
                capabilities: c,
            });
        prop_oneof![
            (
                any::<u32>(),
                "[a-z0-9-]{1,12}",
                caps(),
                proptest::collection::vec(device, 0..4),
                any::<u32>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(v, node, capabilities, devices, mc, instance, attempt)| {
                    ToMaster::Register(Register {
                        protocol_version: v,
                        node,
                        advertise: "127.0.0.1:7700".into(),
                        capabilities,
                        devices,
                        max_concurrency: mc,
                        instance,
                        attempt,
                        held: vec![],
                        data: None,
                    })
                }),
            (
                "[a-z0-9-]{1,12}",
                any::<u64>(),
                any::<u64>(),
                0f32..1.0,
                any::<u32>(),
                proptest::option::of(any::<u64>()),
                proptest::option::of("[ -~]{0,20}")
            )
                .prop_map(|(node, epoch, seq, q, active, last, error)| {
                    ToMaster::Heartbeat(Heartbeat {
                        node,
                        epoch,
                        seq,
                        queue_ratio: q,
                        gpu_usage: q / 2.0,
                        active_tasks: active,
                        last_frame: last,
                        status: WorkerStatus::Ok,
                        error,
                    })
                }),
            ("[a-z0-9-]{1,12}", any::<u64>())
                .prop_map(|(node, epoch)| ToMaster::Unregister { node, epoch }),
        ]
    }

    proptest! {
        #[test]
        fn to_master_round_trips(m in to_master()) {
            let bytes = encode(&m).unwrap();
            let back: ToMaster = decode(&bytes).unwrap();
            prop_assert_eq!(back, m);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ToMaster>(&bytes);
            let _ = decode::<ToWorker>(&bytes);
            let _ = decode::<AdminRequest>(&bytes);
        }

        #[test]
        fn remote_cast_round_trips_through_ractor(m in to_master()) {
            let ser = MasterMsg::Worker(m.clone()).serialize().unwrap();
            match MasterMsg::deserialize(ser).unwrap() {
                MasterMsg::Worker(back) => prop_assert_eq!(back, m),
                _ => prop_assert!(false, "expected a worker message"),
            }
        }
    }

    #[test]
    fn garbage_becomes_malformed_not_a_panic() {
        let msg = SerializedMessage::Cast {
            variant: VARIANT_TO_MASTER.into(),
            args: vec![0xc1, 0xff, 0x00, 0x13],
            metadata: None,
        };
        match MasterMsg::deserialize(msg).unwrap() {
            MasterMsg::Malformed(e) => assert!(e.contains("malformed `ToMaster`"), "{e}"),
            _ => panic!("garbage must decode as Malformed"),
        }
    }

    #[test]
    fn unknown_variant_becomes_malformed() {
        let msg = cast("something.else", vec![]);
        match WorkerMsg::deserialize(msg).unwrap() {
            WorkerMsg::Malformed(e) => assert!(e.contains("unknown cast `something.else`"), "{e}"),
            _ => panic!("unknown variant must decode as Malformed"),
        }
    }

    #[test]
    fn nesting_beyond_the_depth_limit_is_refused() {
        // 200 nested one-element arrays: [[[[...]]]]
        let mut bytes = vec![0x91u8; 200];
        bytes.push(0xc0);
        let err = decode::<serde_json::Value>(&bytes).unwrap_err();
        assert!(err.contains("depth"), "{err}");
    }

    #[test]
    fn huge_declared_length_does_not_allocate() {
        // An array header claiming 2^32-1 elements followed by nothing.
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<Vec<u64>>(&bytes).is_err());
    }

    #[test]
    fn local_only_messages_refuse_to_serialize() {
        assert!(MasterMsg::Tick { sent_ms: 0 }.serialize().is_err());
        assert!(WorkerMsg::Tick.serialize().is_err());
    }
}
