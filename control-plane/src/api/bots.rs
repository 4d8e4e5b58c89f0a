//! `BotService`: one-line handlers over [`BotManager`]; a call for another node's bot is sent to that
//! node (`forward.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::controlplane::v1 as pb;
use pb::bot_service_server::BotService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::forward::{self, Forwarder};
use super::{Scope, convert};
use crate::bots::Platform;
use crate::bots::{BotManager, CreateBot};
use crate::cluster::Need;

pub struct Bots<P: Platform> {
    m: Arc<BotManager<P>>,
    forward: Forwarder,
}

impl<P: Platform> Bots<P> {
    pub fn new(m: Arc<BotManager<P>>, forward: Forwarder) -> Self {
        Bots { m, forward }
    }
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl<P: Platform> BotService for Bots<P> {
    async fn create_bot(&self, mut r: Request<pb::CreateBotRequest>) -> Res<pb::CreateBotResponse> {
        Scope::of(&r).allow(&r.get_ref().name)?;
        let need = Need {
            memory_bytes: self.m.reserved_memory(&convert::limits(r.get_ref().resources)),
            node: Some(r.get_ref().node.clone()).filter(|n| !n.is_empty()),
            selector: r.get_ref().node_selector.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        if let Some(hop) = self.forward.place(&r, &r.get_ref().name, need).await? {
            r.get_mut().node = hop.peer.node.clone();
            return forward::unary(&hop, r).await;
        }
        let r = r.into_inner();
        let req = CreateBot {
            name: r.name,
            image: r.image,
            env: r.env.into_iter().collect(),
            labels: r.labels.into_iter().collect(),
            limits: convert::limits(r.resources),
            start: r.start.unwrap_or(true),
            restore: r.restore,
            egress: convert::egress(r.egress)?,
        };
        let b = self.m.create(req).await?;
        Ok(Response::new(pb::CreateBotResponse { bot: Some(convert::bot(b, None)) }))
    }

    async fn get_bot(&self, r: Request<pb::GetBotRequest>) -> Res<pb::GetBotResponse> {
        Scope::of(&r).allow(&r.get_ref().name)?;
        // A bot on a lost node is still shown, from the database, with when its node was lost.
        match self.forward.peer(&r, &r.get_ref().name).await {
            Ok(Some(hop)) => return forward::unary(&hop, r).await,
            Ok(None) => {}
            Err(s) if s.code() == tonic::Code::Unavailable => {}
            Err(s) => return Err(s),
        }
        let (b, pid) = self.m.get(&r.get_ref().name).await?;
        let disk = if r.get_ref().disk_usage { Some(self.m.disk_usage(&b).await) } else { None };
        let lost = self.forward.lost_nodes().await?;
        let mut bot = convert::bot(b, pid);
        bot.node_lost_since_ms = lost.get(&bot.node).copied().unwrap_or(0);
        if let Some(d) = disk {
            bot.disk_used_bytes = d.used_bytes.unwrap_or(0);
            bot.disk_quota_enforced = d.enforced;
        }
        Ok(Response::new(pb::GetBotResponse { bot: Some(bot) }))
    }

    async fn list_bots(&self, r: Request<pb::ListBotsRequest>) -> Res<pb::ListBotsResponse> {
        let scope = Scope::of(&r);
        let r = r.into_inner();
        let (bots, next) = self.m.list(&r.label_selector.into_iter().collect(), r.page_size, &r.page_token).await?;
        // A scoped token sees its own bots only (a page may then hold fewer than asked).
        let lost = self.forward.lost_nodes().await?;
        let bots = bots
            .into_iter()
            .filter(|b| scope.sees(&b.name))
            .map(|b| {
                let mut bot = convert::bot(b, None);
                bot.node_lost_since_ms = lost.get(&bot.node).copied().unwrap_or(0);
                bot
            })
            .collect();
        Ok(Response::new(pb::ListBotsResponse { bots, next_page_token: next }))
    }

    async fn start_bot(&self, r: Request<pb::StartBotRequest>) -> Res<pb::StartBotResponse> {
        Scope::of(&r).allow(&r.get_ref().name)?;
        if let Some(peer) = self.forward.peer(&r, &r.get_ref().name).await? {
            return forward::unary(&peer, r).await;
        }
        let b = self.m.start(&r.get_ref().name).await?;
        Ok(Response::new(pb::StartBotResponse { bot: Some(convert::bot(b, None)) }))
    }

    async fn stop_bot(&self, r: Request<pb::StopBotRequest>) -> Res<pb::StopBotResponse> {
        Scope::of(&r).allow(&r.get_ref().name)?;
        if let Some(peer) = self.forward.peer(&r, &r.get_ref().name).await? {
            return forward::unary(&peer, r).await;
        }
        let timeout = (r.get_ref().timeout_ms > 0).then(|| Duration::from_millis(r.get_ref().timeout_ms));
        let b = self.m.stop(&r.get_ref().name, timeout).await?;
        Ok(Response::new(pb::StopBotResponse { bot: Some(convert::bot(b, None)) }))
    }

    async fn delete_bot(&self, r: Request<pb::DeleteBotRequest>) -> Res<pb::DeleteBotResponse> {
        Scope::of(&r).allow(&r.get_ref().name)?;
        if let Some(peer) = self.forward.peer(&r, &r.get_ref().name).await? {
            return forward::unary(&peer, r).await;
        }
        self.m.delete(&r.get_ref().name, r.get_ref().keep_data).await?;
        Ok(Response::new(pb::DeleteBotResponse {}))
    }

    async fn set_egress(&self, r: Request<pb::SetEgressRequest>) -> Res<pb::SetEgressResponse> {
        Scope::of(&r).allow(&r.get_ref().name)?;
        if let Some(peer) = self.forward.peer(&r, &r.get_ref().name).await? {
            return forward::unary(&peer, r).await;
        }
        let r = r.into_inner();
        let b = self.m.set_egress(&r.name, convert::egress(r.egress)?).await?;
        Ok(Response::new(pb::SetEgressResponse { bot: Some(convert::bot(b, None)) }))
    }

    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<pb::BotEvent, Status>> + Send>>;

    async fn watch_events(&self, r: Request<pb::WatchEventsRequest>) -> Res<Self::WatchEventsStream> {
        let scope = Scope::of(&r);
        let r = r.into_inner();
        if !r.name.is_empty() {
            scope.allow(&r.name)?;
        }
        // Every node's events are in the one journal, so any node answers, an owner lost or not.
        let only = r.name;
        let (from, events) = self
            .m
            .events()
            .watch_from(r.after_id, move |e| (only.is_empty() || e.name == only) && scope.sees(&e.name))
            .await?;
        let mut response = Response::new(Box::pin(tokio_stream::StreamExt::map(events, |e| {
            e.map(convert::event).map_err(Status::from)
        })) as Self::WatchEventsStream);
        response.metadata_mut().insert(berth_proto::wire::EVENTS_AFTER_HEADER, from.into());
        Ok(response)
    }
}
