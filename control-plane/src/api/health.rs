//! gRPC health (`grpc.health.v1`): berthd's own services, and one entry per bot, `bot/<name>`, SERVING
//! while the bot runs and NOT_SERVING otherwise (NOT_FOUND once it is deleted). Load balancers and
//! orchestrators can watch a bot without an API of their own. Kept current from the bots' event stream,
//! resynchronised from the database whenever events were missed.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, HealthService};

use crate::bots::BotManager;
use crate::bots::Platform;
use crate::bots::model::BotState;

/// The health service name of a bot.
pub fn bot_service(name: &str) -> String {
    format!("bot/{name}")
}

fn status(state: BotState) -> ServingStatus {
    if state == BotState::Running { ServingStatus::Serving } else { ServingStatus::NotServing }
}

/// A reporter kept in step with the bots until `stop` turns true; share it between listeners.
pub fn track<P: Platform>(manager: Arc<BotManager<P>>, mut stop: tokio::sync::watch::Receiver<bool>) -> HealthReporter {
    let reporter = HealthReporter::new();
    let mut r = reporter.clone();
    // Subscribed before the first sync, so no change falls between the two.
    let mut events = manager.subscribe();
    tokio::spawn(async move {
        let mut known = sync(&manager, &mut r, Vec::new()).await;
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = async { let _ = stop.wait_for(|v| *v).await; } => return,
            };
            match ev {
                Ok(ev) if ev.kind == "deleted" => {
                    r.clear_service_status(&bot_service(&ev.name)).await;
                    known.retain(|n| *n != ev.name);
                }
                Ok(ev) => {
                    r.set_service_status(bot_service(&ev.name), status(ev.state)).await;
                    if !known.contains(&ev.name) {
                        known.push(ev.name);
                    }
                }
                Err(RecvError::Lagged(_)) => known = sync(&manager, &mut r, known).await,
                Err(RecvError::Closed) => return,
            }
        }
    });
    reporter
}

/// Sets every bot's status from the database and clears those of bots that are gone; returns the names.
async fn sync<P: Platform>(manager: &BotManager<P>, r: &mut HealthReporter, previous: Vec<String>) -> Vec<String> {
    let bots = match manager.all_bots().await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "health: cannot read the bots; keeping the last statuses");
            return previous;
        }
    };
    for name in previous.iter().filter(|n| !bots.iter().any(|b| &b.name == *n)) {
        r.clear_service_status(&bot_service(name)).await;
    }
    for b in &bots {
        r.set_service_status(bot_service(&b.name), status(b.state)).await;
    }
    bots.into_iter().map(|b| b.name).collect()
}

/// The health service over `reporter`'s statuses.
pub fn service(reporter: &HealthReporter) -> tonic_health::pb::health_server::HealthServer<HealthService> {
    tonic_health::pb::health_server::HealthServer::new(HealthService::from_health_reporter(reporter.clone()))
}
