//! [`MasterHandle`]: the books behind a mutex, the runner of their [`Effect`]s, the streams of
//! frameworks and agents, and the driver task that calls [`Master::tick`].
//!
//! The driver starts with the handle when a tokio runtime is present (the binary and the HTTP
//! tests create the handle inside one) and stops when the last handle is dropped: it holds only a
//! weak reference.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::scheduler::{call, Event};
use tokio::time::MissedTickBehavior;
use tracing::warn;

use super::{heartbeat_event, Effect, Master};
use crate::config::Config;
use crate::error::ApiError;
use crate::stream::{CloseHook, EventStream};

/// The driver's period bound: the tick never runs less often than this.
const TICK_MAX: Duration = Duration::from_millis(100);
/// ... nor more often than this.
const TICK_MIN: Duration = Duration::from_millis(5);

const _: () = assert!(TICK_MIN.as_millis() < TICK_MAX.as_millis());

/// The shared master: the books behind a mutex. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct MasterHandle {
    inner: Arc<Mutex<Master>>,
}

/// How often the driver ticks: often enough for every timer the configuration asks for.
fn tick_period(config: &Config) -> Duration {
    [
        TICK_MAX,
        config.allocation_interval,
        config.agent_ping_timeout,
        config.status_update_retry_interval,
    ]
    .into_iter()
    .chain(config.offer_timeout)
    .min()
    .unwrap_or(TICK_MAX)
    .clamp(TICK_MIN, TICK_MAX)
}

impl MasterHandle {
    /// A master for `config`; inside a tokio runtime its driver starts right away.
    pub fn new(config: Config) -> Self {
        let period = tick_period(&config);
        let handle = MasterHandle {
            inner: Arc::new(Mutex::new(Master::new(config))),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&handle.inner);
            runtime.spawn(drive(weak, period));
        }
        handle
    }

    fn lock(&self) -> MutexGuard<'_, Master> {
        // A panic while holding the lock cannot leave the books half-updated in a way worse
        // than stopping the master would, so keep serving.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the locked books, then carries out the effects it recorded.
    pub fn with<R>(&self, f: impl FnOnce(&mut Master) -> R) -> R {
        let (result, effects) = {
            let mut master = self.lock();
            let result = f(&mut master);
            (result, master.take_effects())
        };
        for effect in effects {
            self.run(effect);
        }
        result
    }

    /// The settings.
    pub fn config(&self) -> Arc<Config> {
        self.lock().config().clone()
    }

    /// The advertised address.
    pub fn advertised(&self) -> (String, Ipv4Addr, u16) {
        let master = self.lock();
        let config = master.config();
        (
            config.hostname.clone(),
            config.advertise_ip,
            config.advertise_port,
        )
    }

    fn run(&self, effect: Effect) {
        match effect {
            Effect::FailoverTimer {
                framework_id,
                generation,
                timeout,
            } => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    warn!(framework = %framework_id, "no runtime for the failover timer");
                    return;
                };
                let master = Arc::downgrade(&self.inner);
                runtime.spawn(async move {
                    // Far-future deadlines are clamped by tokio; `failover_timeout` was validated
                    // to fit in i64 nanoseconds.
                    tokio::time::sleep(timeout).await;
                    if let Some(inner) = master.upgrade() {
                        MasterHandle { inner }
                            .with(|m| m.failover_timeout_expired(&framework_id, generation));
                    }
                });
            }
            Effect::Exit { message } => {
                // The registry already holds everything acknowledged; nothing else to flush.
                tracing::error!(%message, "stopping the master");
                eprintln!("mesoblk-master: {message}");
                std::process::exit(1);
            }
        }
    }

    /// SUBSCRIBE: the `Mesos-Stream-Id` and the response body.
    pub fn subscribe(
        &self,
        subscribe: call::Subscribe,
        content_type: ContentType,
    ) -> (String, EventStream<Event>) {
        let subscription = self.with(|m| m.subscribe(subscribe));
        let heartbeat = self.config().heartbeat_interval;
        let on_close = match (
            subscription.framework_id.clone(),
            subscription.connection_id,
        ) {
            (Some(framework_id), Some(connection_id)) => {
                let master: Weak<Mutex<Master>> = Arc::downgrade(&self.inner);
                Some(Box::new(move || {
                    if let Some(inner) = master.upgrade() {
                        MasterHandle { inner }.with(|m| m.exited(&framework_id, connection_id));
                    }
                }) as CloseHook)
            }
            _ => None,
        };
        let heartbeat = on_close.as_ref().map(|_| (heartbeat, heartbeat_event()));
        let stream = EventStream::new(subscription.events, content_type, heartbeat, on_close);
        (subscription.stream_id, stream)
    }

    /// POST /agent/v1/subscribe: the agent's event stream (PINGs come from the driver).
    pub fn subscribe_agent(
        &self,
        subscribe: &agent::Subscribe,
        content_type: ContentType,
    ) -> Result<EventStream<agent::Event>, ApiError> {
        let (connection_id, events) = self.with(|m| m.subscribe_agent(subscribe))?;
        let agent_id = subscribe.agent_id.value.clone();
        let master: Weak<Mutex<Master>> = Arc::downgrade(&self.inner);
        let on_close: CloseHook = Box::new(move || {
            if let Some(inner) = master.upgrade() {
                MasterHandle { inner }.with(|m| m.agent_exited(&agent_id, connection_id));
            }
        });
        Ok(EventStream::new(events, content_type, None, Some(on_close)))
    }
}

/// The driver: ticks the master until it is gone.
async fn drive(master: Weak<Mutex<Master>>, period: Duration) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = master.upgrade() else {
            return;
        };
        MasterHandle { inner }.with(|m| {
            let now = m.now();
            m.tick(now);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_follows_the_shortest_timer_within_bounds() {
        let mut config = Config::new("h", Ipv4Addr::LOCALHOST, 5050);
        assert_eq!(tick_period(&config), TICK_MAX);
        config.allocation_interval = Duration::from_millis(20);
        assert_eq!(tick_period(&config), Duration::from_millis(20));
        config.offer_timeout = Some(Duration::from_millis(1));
        assert_eq!(tick_period(&config), TICK_MIN);
    }
}
