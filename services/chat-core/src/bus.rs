//! How events get from the replica that committed them to every replica's
//! [`Hub`]. Embedded default: in-process, one replica. Cross-replica fan-out
//! over Redis plugs in here as another variant; the hub and the streams
//! above it do not change.

use crate::{
    events::{SharedEvent, Topic},
    hub::Hub,
};

/// Publishes live events.
#[derive(Debug, Clone)]
pub enum EventBus {
    /// Events go straight to this process's hub.
    InProcess(Hub),
}

impl EventBus {
    /// A bus for one replica.
    pub fn in_process() -> Self {
        EventBus::InProcess(Hub::default())
    }

    /// The local subscriber registry.
    pub fn hub(&self) -> &Hub {
        match self {
            EventBus::InProcess(hub) => hub,
        }
    }

    /// Publishes `event` to the subscribers of `topic`. Never waits on a
    /// subscriber. Delivery is at most once: streams repair gaps in message
    /// seqs from the database, so a lost notification delays a message but
    /// never loses it.
    pub fn publish(&self, topic: &Topic, event: SharedEvent) {
        match self {
            EventBus::InProcess(hub) => hub.deliver(topic, &event),
        }
    }
}
