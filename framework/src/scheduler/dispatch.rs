//! The callbacks' task: takes what the subscription loop queued and calls the [`Scheduler`],
//! one callback at a time, then sends implicit acknowledgements.
//!
//! Nothing is delivered once the driver is stopping, stopped or aborted, except the final
//! `error` of a refusal. Events missing the body their type names are dropped with a warning
//! (pymesos does the same).

use mesoblk_proto::mesos::v1::scheduler::{call, event, Call, Event};
use mesoblk_proto::mesos::v1::{FrameworkId, MasterInfo};
use tokio::sync::mpsc;

use super::calls::{acknowledgement, operation_acknowledgement};
use super::{Scheduler, SchedulerDriver};

/// What the subscription loop hands to the callbacks.
#[derive(Debug)]
pub(super) enum Dispatch {
    /// SUBSCRIBED arrived.
    Subscribed {
        framework_id: FrameworkId,
        master_info: Option<Box<MasterInfo>>,
        reregistered: bool,
    },
    /// The live subscription broke.
    Disconnected,
    /// Any other event (never HEARTBEAT, SUBSCRIBED or ERROR).
    Event(Box<Event>),
    /// The driver aborted for this reason; the last item.
    Fatal(String),
}

/// The task's body; returns when the queue closes or after `Fatal`.
pub(super) async fn run<S: Scheduler>(
    driver: SchedulerDriver,
    mut scheduler: S,
    mut rx: mpsc::Receiver<Dispatch>,
) {
    while let Some(item) = rx.recv().await {
        match item {
            Dispatch::Fatal(message) => {
                scheduler.error(&driver, &message).await;
                break;
            }
            _ if !driver.inner.is_running() => {}
            Dispatch::Subscribed {
                framework_id,
                master_info,
                reregistered,
            } => {
                if reregistered {
                    scheduler
                        .reregistered(&driver, master_info.as_deref())
                        .await;
                } else {
                    scheduler
                        .registered(&driver, &framework_id, master_info.as_deref())
                        .await;
                }
            }
            Dispatch::Disconnected => scheduler.disconnected(&driver).await,
            Dispatch::Event(event) => deliver(&driver, &mut scheduler, *event).await,
        }
    }
}

fn missing(kind: event::Type) {
    tracing::warn!(
        event = kind.as_str_name(),
        "dropping an event without its body"
    );
}

async fn deliver<S: Scheduler>(driver: &SchedulerDriver, scheduler: &mut S, event: Event) {
    use event::Type as T;
    let kind = event.r#type();
    match kind {
        T::Offers => match event.offers {
            Some(body) => scheduler.resource_offers(driver, body.offers).await,
            None => missing(kind),
        },
        T::InverseOffers => match event.inverse_offers {
            Some(body) => scheduler.inverse_offers(driver, body.inverse_offers).await,
            None => missing(kind),
        },
        T::Rescind => match event.rescind {
            Some(body) => scheduler.offer_rescinded(driver, &body.offer_id).await,
            None => missing(kind),
        },
        T::RescindInverseOffer => match event.rescind_inverse_offer {
            Some(body) => {
                scheduler
                    .inverse_offer_rescinded(driver, &body.inverse_offer_id)
                    .await
            }
            None => missing(kind),
        },
        T::Update => match event.update {
            Some(body) => {
                scheduler.status_update(driver, &body.status).await;
                if let Some(ack) = acknowledgement(&body.status) {
                    let call = Call {
                        acknowledge: Some(ack),
                        ..Call::default()
                    };
                    implicit_ack(driver, call, call::Type::Acknowledge).await;
                }
            }
            None => missing(kind),
        },
        T::UpdateOperationStatus => match event.update_operation_status {
            Some(body) => {
                scheduler.operation_status(driver, &body.status).await;
                if let Some(ack) = operation_acknowledgement(&body.status) {
                    let call = Call {
                        acknowledge_operation_status: Some(ack),
                        ..Call::default()
                    };
                    implicit_ack(driver, call, call::Type::AcknowledgeOperationStatus).await;
                }
            }
            None => missing(kind),
        },
        T::Message => match event.message {
            Some(m) => {
                scheduler
                    .framework_message(driver, &m.executor_id, &m.agent_id, &m.data)
                    .await
            }
            None => missing(kind),
        },
        T::Failure => match event.failure {
            Some(event::Failure {
                agent_id: Some(agent_id),
                executor_id: Some(executor_id),
                status,
            }) => {
                scheduler
                    .executor_lost(driver, &executor_id, &agent_id, status)
                    .await
            }
            Some(event::Failure {
                agent_id: Some(agent_id),
                executor_id: None,
                ..
            }) => scheduler.agent_lost(driver, &agent_id).await,
            _ => missing(kind),
        },
        T::Subscribed | T::Heartbeat | T::Error => {}
        T::Unknown => tracing::debug!("ignoring an event of unknown type"),
    }
}

/// Sends an acknowledgement if the driver acknowledges by itself. A failure is only logged: the
/// update is then resent by the agent and acknowledged again.
async fn implicit_ack(driver: &SchedulerDriver, call: Call, kind: call::Type) {
    let inner = &driver.inner;
    if !inner.config.implicit_acknowledgements || !inner.is_running() {
        return;
    }
    if let Err(error) = inner.send(call, kind).await {
        tracing::warn!(%error, "implicit acknowledgement failed; the update will be resent");
    }
}
