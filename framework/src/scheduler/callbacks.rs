//! The [`Scheduler`] trait: what a framework implements to be told what the master says.

use std::future::Future;

use mesoblk_proto::mesos::v1::{
    AgentId, ExecutorId, FrameworkId, InverseOffer, MasterInfo, Offer, OfferId, OperationStatus,
    TaskStatus,
};

use super::SchedulerDriver;

/// A framework's scheduler: the driver calls these as events arrive.
///
/// Every callback is an `async fn` with an empty default, so an implementation overrides only
/// what it needs. Callbacks run **one at a time, in the order the master sent the events**, on
/// a task the driver spawns (see the [module docs](super) for the threading model). A callback
/// may call any method of the driver, and await it: calls travel on their own connection, so
/// they never wait for the event stream. A callback that awaits for long holds back the events
/// after it; blocking (non-async) work belongs in `tokio::task::spawn_blocking`.
///
/// The driver passes itself to every callback; clone it to keep a handle for other tasks.
pub trait Scheduler: Send + 'static {
    /// The framework subscribed for the first time (this driver's first SUBSCRIBED);
    /// `framework_id` is the id to keep for failing over later.
    fn registered(
        &mut self,
        driver: &SchedulerDriver,
        framework_id: &FrameworkId,
        master_info: Option<&MasterInfo>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, framework_id, master_info);
        async {}
    }

    /// The driver subscribed again after a disconnection (same framework id).
    fn reregistered(
        &mut self,
        driver: &SchedulerDriver,
        master_info: Option<&MasterInfo>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, master_info);
        async {}
    }

    /// The event stream broke (closed, failed, or silent for too many heartbeat intervals).
    /// The driver is reconnecting; outstanding offers are void.
    fn disconnected(&mut self, driver: &SchedulerDriver) -> impl Future<Output = ()> + Send {
        let _ = driver;
        async {}
    }

    /// New offers (an OFFERS event).
    fn resource_offers(
        &mut self,
        driver: &SchedulerDriver,
        offers: Vec<Offer>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, offers);
        async {}
    }

    /// New inverse offers (maintenance; an INVERSE_OFFERS event).
    fn inverse_offers(
        &mut self,
        driver: &SchedulerDriver,
        offers: Vec<InverseOffer>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, offers);
        async {}
    }

    /// An offer is no longer valid (a RESCIND event).
    fn offer_rescinded(
        &mut self,
        driver: &SchedulerDriver,
        offer_id: &OfferId,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, offer_id);
        async {}
    }

    /// An inverse offer is no longer valid (a RESCIND_INVERSE_OFFER event).
    fn inverse_offer_rescinded(
        &mut self,
        driver: &SchedulerDriver,
        inverse_offer_id: &OfferId,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, inverse_offer_id);
        async {}
    }

    /// A task's status changed (an UPDATE event). With implicit acknowledgements the driver
    /// acknowledges it when this returns, if it carries a `uuid`; otherwise call
    /// [`SchedulerDriver::acknowledge_status_update`].
    fn status_update(
        &mut self,
        driver: &SchedulerDriver,
        status: &TaskStatus,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, status);
        async {}
    }

    /// An offer operation's status changed (an UPDATE_OPERATION_STATUS event); acknowledged
    /// like [`status_update`](Self::status_update).
    fn operation_status(
        &mut self,
        driver: &SchedulerDriver,
        status: &OperationStatus,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, status);
        async {}
    }

    /// An executor sent the framework a message (a MESSAGE event; not reliable).
    fn framework_message(
        &mut self,
        driver: &SchedulerDriver,
        executor_id: &ExecutorId,
        agent_id: &AgentId,
        data: &[u8],
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, executor_id, agent_id, data);
        async {}
    }

    /// An agent was lost (a FAILURE event without an executor).
    fn agent_lost(
        &mut self,
        driver: &SchedulerDriver,
        agent_id: &AgentId,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, agent_id);
        async {}
    }

    /// An executor terminated (a FAILURE event naming it); `status` is its exit status when
    /// known.
    fn executor_lost(
        &mut self,
        driver: &SchedulerDriver,
        executor_id: &ExecutorId,
        agent_id: &AgentId,
        status: Option<i32>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, executor_id, agent_id, status);
        async {}
    }

    /// The master refused or removed the framework (an ERROR event, or a subscription the
    /// master answered with a 4xx), or the driver gave up reconnecting. The driver has aborted
    /// when this is called; it is the last callback.
    fn error(
        &mut self,
        driver: &SchedulerDriver,
        message: &str,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, message);
        async {}
    }
}
