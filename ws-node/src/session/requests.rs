//! What a connection does with each client request (docs/PROTOCOL.md §2):
//! a new client action goes here, as a `Request` variant in `protocol` and a
//! handler below. A handler answers with frames, or with a [`RequestError`]
//! that becomes the `error` frame; neither closes the socket.

use super::Connection;
use super::replay::{REPLAY_PAGE, REPLAY_PAGE_BYTES, Replay};
use crate::cluster::presence::{self, Membership};
use crate::protocol::{self, CloseReason, Request, RequestError, RequestId, ServerFrame, Since};
use serde_json::value::RawValue;
use shared::channel::{ChannelName, PublishError, PublishRequest, Publisher, StreamPosition};
use shared::namespace::{NamespaceRule, Refusal};
use shared::quota::{Charge, QuotaError};
use shared::scope::Scope;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A handler's answer: the frames to send, or the error to send instead.
type Answer = Result<Vec<String>, RequestError>;

/// A publish request, parsed.
struct PublishAsk<'a> {
    id: Option<RequestId>,
    channel: ChannelName,
    data: &'a RawValue,
    idempotency_key: Option<String>,
}

/// Whether `text` is a well-formed publish request: publishes that arrive
/// together are carried out together (`Connection::on_publishes`).
pub(super) fn is_publish(text: &Utf8Bytes) -> bool {
    matches!(protocol::parse(text), Ok((_, Request::Publish { .. })))
}

/// The `error` a namespace's refusal answers with; `not_admitted` words
/// [`Refusal::NotAdmitted`] for the action refused.
fn refused(refusal: Refusal, not_admitted: &'static str) -> RequestError {
    match refusal {
        Refusal::UnknownNamespace => RequestError::UnknownNamespace,
        Refusal::NotAdmitted => RequestError::Forbidden(not_admitted),
        Refusal::NameNotAccepted => RequestError::NameNotAccepted,
        Refusal::TooLarge { limit } => RequestError::MessageTooLarge(limit),
    }
}

/// The `error` a failed publish answers with.
fn publish_error(e: PublishError) -> RequestError {
    match e {
        PublishError::IdempotencyWithoutHistory => RequestError::IdempotencyUnsupported,
        PublishError::InvalidIdempotencyKey => RequestError::BadRequest(
            "idempotency_key must be 1-64 printable ASCII characters".into(),
        ),
        PublishError::TooDeep => RequestError::BadRequest(e.to_string()),
        PublishError::Redis(e) => {
            tracing::warn!(error = %e, "publish failed");
            RequestError::Unavailable("the message could not be published; retry")
        }
    }
}

/// Where a subscription's replay from history starts.
enum Resume {
    /// The `since` the client sent: the ack says whether it was covered.
    AskedFor(Since),
    /// Where a new subscription found the channel: the ack carries it.
    FromStart(Since),
}

impl Resume {
    fn since(&self) -> &Since {
        match self {
            Self::AskedFor(since) | Self::FromStart(since) => since,
        }
    }
}

impl Connection {
    /// Handles one client text frame, already counted against the message
    /// rate (see `rate`): replies to send, or a reason to close.
    pub(super) async fn on_text(&mut self, text: &Utf8Bytes) -> Result<Vec<String>, CloseReason> {
        let (id, request) = match protocol::parse(text) {
            Ok(parsed) => parsed,
            Err(bad) => return Ok(vec![bad.error.frame(bad.id.as_ref())]),
        };
        let id = id.as_ref();
        let answer = match request {
            Request::Ping => Ok(vec![protocol::ack(id)]),
            Request::Auth { .. } => Err(RequestError::AlreadyAuthenticated),
            Request::Subscribe { channel, since } => self.subscribe(id, channel, since).await,
            Request::Unsubscribe { channel } => self.unsubscribe(id, &channel).await,
            Request::Publish {
                channel,
                data,
                idempotency_key,
            } => {
                let ask = PublishAsk {
                    id: id.cloned(),
                    channel,
                    data,
                    idempotency_key,
                };
                return Ok(self.publish_all(vec![ask]).await);
            }
            Request::Presence { channel } => self.presence(id, &channel).await,
        };
        Ok(answer.unwrap_or_else(|error| vec![error.frame(id)]))
    }

    /// The namespace rule of `channel` if this connection may subscribe to it.
    fn readable_rule(&self, channel: &ChannelName) -> Result<NamespaceRule, RequestError> {
        self.node
            .namespaces
            .admit_subscribe(self.principal.user_id, channel)
            .cloned()
            .map_err(|refusal| refused(refusal, "you may not subscribe to this channel"))
    }

    async fn subscribe(
        &mut self,
        id: Option<&RequestId>,
        channel: ChannelName,
        since: Option<Since>,
    ) -> Answer {
        let rule = self.readable_rule(&channel)?;
        let already = self.guard.channels.contains(&channel);
        // A new subscription without `since` to a channel with history starts
        // where the channel stands now, read *before* joining: whatever is
        // published between that read and the join is replayed like a resume
        // (usually nothing), and the ack carries the position, so that a
        // client that receives nothing before it loses its connection still
        // has a `since` to resume from.
        let start = match (&since, rule.history, already) {
            (None, Some(_), false) => Some(self.start_position(&channel).await?),
            _ => None,
        };
        if !already {
            self.join_channel(&channel, &rule).await?;
        }
        match (since, start) {
            (Some(since), _) => {
                if !self.take_history_read() {
                    // Not joined half-way: the client retries the subscribe.
                    if !already {
                        self.leave_channel(&channel).await;
                    }
                    return Err(RequestError::RateLimited(
                        "too many history reads; retry the subscribe in a moment",
                    ));
                }
                let resume = Resume::AskedFor(since);
                self.resume(id, channel, rule.history, resume, already)
                    .await
            }
            (None, Some(start)) => {
                let resume = Resume::FromStart(start);
                self.resume(id, channel, rule.history, resume, already)
                    .await
            }
            (None, None) => Ok(vec![ack_subscribed(id, &channel, None, None)]),
        }
    }

    /// Where `channel` stands: its epoch and last offset, or `""` and 0 for
    /// a channel that has no history yet (see [`Since::is_from_the_start`]).
    /// (`&mut self` although it changes nothing: a shared reference to the
    /// connection, whose socket is not `Sync`, would make the task's future
    /// not `Send`.)
    async fn start_position(&mut self, channel: &ChannelName) -> Result<Since, RequestError> {
        let mut redis = self.node.redis.clone();
        let position = shared::channel::current_position(&mut redis, &self.node.keys, channel)
            .await
            .map_err(|_| RequestError::Unavailable("cannot subscribe right now; retry later"))?;
        Ok(position.map_or(
            Since {
                epoch: String::new(),
                offset: 0,
            },
            |at| Since {
                epoch: at.epoch,
                offset: at.offset,
            },
        ))
    }

    /// Replays from history what came after a position, then live: for a
    /// `since` the client asked for (its ack says whether everything missed
    /// could be replayed), or from where a new subscription started. The
    /// subscription is already live, so nothing published from now on is
    /// missed; what the replay covers is skipped when it arrives live.
    async fn resume(
        &mut self,
        id: Option<&RequestId>,
        channel: ChannelName,
        history: Option<shared::channel::HistoryLimits>,
        resume: Resume,
        already: bool,
    ) -> Answer {
        let since = resume.since();
        let Some(limits) = history else {
            return Ok(vec![ack_subscribed(id, &channel, Some(false), None)]);
        };
        let cap = limits.max_len.saturating_mul(2).max(100);
        let mut redis = self.node.redis.clone();
        let history = match shared::channel::history_page(
            &mut redis,
            &self.node.keys,
            &channel,
            since.offset,
            cap,
            shared::channel::PageSize {
                messages: REPLAY_PAGE,
                bytes: REPLAY_PAGE_BYTES,
            },
            None,
        )
        .await
        {
            Ok(history) => history,
            Err(_) => {
                // Not subscribed half-way: the client retries the whole
                // subscribe, and a channel it had already is kept.
                if !already {
                    self.leave_channel(&channel).await;
                }
                return Err(RequestError::Unavailable(
                    "cannot read the channel history right now; retry",
                ));
            }
        };
        // "From the start" means the channel's current epoch, whichever it is.
        let epoch = match (&history.epoch, since.is_from_the_start()) {
            (Some(current), true) => current.clone(),
            _ => since.epoch.clone(),
        };
        let recovered = (since.is_from_the_start() && history.epoch.is_none())
            || history.covers_page(&epoch, since.offset, REPLAY_PAGE);
        let position = history.epoch.clone().map(|epoch| StreamPosition {
            epoch,
            offset: history.offset,
        });
        let mut replies = match &resume {
            Resume::AskedFor(_) => {
                metrics::counter!(crate::telemetry::RECOVERIES, "recovered" => if recovered { "true" } else { "false" }).increment(1);
                vec![ack_subscribed(
                    id,
                    &channel,
                    Some(recovered),
                    position.as_ref(),
                )]
            }
            Resume::FromStart(start) => {
                let start = StreamPosition {
                    epoch: start.epoch.clone(),
                    offset: start.offset,
                };
                let mut replies = vec![ack_subscribed(id, &channel, None, Some(&start))];
                if !recovered {
                    // History lost between the read and the join: say so.
                    metrics::counter!(crate::telemetry::UNRECOVERABLE_GAPS).increment(1);
                    replies.push(protocol::recovery_lost(channel.as_str()));
                }
                replies
            }
        };
        if let Some(position) = &position {
            self.floors.insert(channel.clone(), position.offset);
            if recovered {
                let replay = Box::new(Replay {
                    channel,
                    epoch: position.epoch.clone(),
                    sent: since.offset,
                    until: position.offset,
                    cap,
                    after_id: None,
                });
                replies.extend(self.take_page(replay, history));
            }
        }
        Ok(replies)
    }

    /// Joins `channel` here and in the cluster: the hub (and through it the
    /// node's Redis subscription), the directory entry, and presence where
    /// the namespace tracks it.
    async fn join_channel(
        &mut self,
        channel: &ChannelName,
        rule: &NamespaceRule,
    ) -> Result<(), RequestError> {
        // The connection's own user channel is not counted against the limit.
        if self.guard.channels.len() > self.node.config.max_subscriptions_per_connection {
            return Err(RequestError::TooManySubscriptions);
        }
        if self.node.hub.join(channel, &self.handle).await.is_err() {
            return Err(RequestError::Unavailable(
                "cannot subscribe right now; retry later",
            ));
        }
        self.guard.channels.insert(channel.clone());
        self.publish_directory_entry().await;
        if rule.presence {
            let membership = Membership::new(
                channel.clone(),
                self.principal.user_id,
                &self.principal.username,
                &self.name,
            );
            let mut redis = self.node.redis.clone();
            match presence::join(
                &mut redis,
                &self.node.keys,
                &membership,
                self.node.config.connection_lease(),
            )
            .await
            {
                Ok(()) => {
                    self.node.remember_presence(&membership);
                    self.guard.presence.push(membership);
                }
                Err(e) => tracing::warn!(error = %e, "could not record presence"),
            }
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, id: Option<&RequestId>, channel: &ChannelName) -> Answer {
        if *channel == ChannelName::for_user(self.principal.user_id) {
            return Err(RequestError::Forbidden(
                "a connection always receives its own user channel",
            ));
        }
        self.leave_channel(channel).await;
        Ok(vec![protocol::ack(id)])
    }

    /// Leaves `channel` (a no-op if not a member): the hub, the directory
    /// entry and presence.
    async fn leave_channel(&mut self, channel: &ChannelName) {
        if self.guard.channels.remove(channel) {
            self.node.hub.leave(channel, self.handle.id);
            self.floors.remove(channel);
            self.publish_directory_entry().await;
            if let Some(i) = self
                .guard
                .presence
                .iter()
                .position(|m| m.channel == *channel)
            {
                let membership = self.guard.presence.swap_remove(i);
                self.node.forget_presence(std::slice::from_ref(&membership));
                let mut redis = self.node.redis.clone();
                if let Err(e) = presence::leave(&mut redis, &self.node.keys, &membership).await {
                    tracing::debug!(error = %e, "could not clear presence; its lease will expire");
                }
            }
        }
    }

    /// Handles `texts`, each a publish request (see [`is_publish`]) taken
    /// from the socket together (see `gather_publishes`): the replies, in order.
    pub(super) async fn on_publishes(&mut self, texts: &[Utf8Bytes]) -> Vec<String> {
        let mut asks = Vec::with_capacity(texts.len());
        for text in texts {
            if let Ok((
                id,
                Request::Publish {
                    channel,
                    data,
                    idempotency_key,
                },
            )) = protocol::parse(text)
            {
                asks.push(PublishAsk {
                    id,
                    channel,
                    data,
                    idempotency_key,
                });
            }
        }
        self.publish_all(asks).await
    }

    /// Publishes what this connection may publish of `asks`, charging its
    /// user's quota, in one round trip to Redis for the lot in the common
    /// case: replies (an `ack` or an `error`) in the order of `asks`.
    async fn publish_all(&mut self, asks: Vec<PublishAsk<'_>>) -> Vec<String> {
        let mut answers: Vec<Option<Answer>> = Vec::with_capacity(asks.len());
        let mut admitted = Vec::with_capacity(asks.len());
        for (index, ask) in asks.iter().enumerate() {
            match self.admit_publish(ask) {
                Ok(request) => {
                    answers.push(None);
                    admitted.push((index, request));
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let mut redis = self.node.redis.clone();
        let charges: Vec<Charge<'_>> = admitted
            .iter()
            .map(|(_, request)| Charge {
                channel: request.channel,
                with_history: request.history.is_some(),
                bytes: request.data.get().len(),
            })
            .collect();
        let charged = shared::quota::charge_publishes(
            &mut redis,
            &self.node.keys,
            &self.node.config.common.publish_quota(),
            self.principal.user_id,
            &charges,
        )
        .await;
        let mut requests = Vec::with_capacity(admitted.len());
        for ((index, request), charge) in admitted.into_iter().zip(charged) {
            match charge {
                Ok(()) => requests.push((index, request)),
                Err(e @ QuotaError::Exceeded { .. }) => {
                    answers[index] = Some(Err(RequestError::QuotaExceeded(e.to_string())));
                }
                Err(QuotaError::Redis(e)) => {
                    tracing::warn!(error = %e, "publish quota not charged");
                    answers[index] = Some(Err(RequestError::Unavailable(
                        "the message could not be published; retry",
                    )));
                }
            }
        }
        let publisher = Publisher {
            user_id: self.principal.user_id,
            username: self.principal.username.clone(),
        };
        let batch: Vec<PublishRequest<'_>> = requests.iter().map(|(_, r)| *r).collect();
        let published =
            shared::channel::publish_many(&mut redis, &self.node.keys, &publisher, &batch).await;
        for ((index, _), outcome) in requests.iter().zip(published) {
            answers[*index] = Some(match outcome {
                Ok(published) => {
                    metrics::counter!(crate::telemetry::CLIENT_PUBLISHES).increment(1);
                    let position = published.position.as_ref();
                    Ok(vec![
                        ServerFrame::Ack {
                            id: asks[*index].id.as_ref(),
                            channel: Some(asks[*index].channel.as_str()),
                            recovered: None,
                            epoch: position.map(|p| p.epoch.as_str()),
                            offset: position.map(|p| p.offset),
                            duplicate: published.duplicate.then_some(true),
                        }
                        .to_json(),
                    ])
                }
                Err(e) => Err(publish_error(e)),
            });
        }
        answers
            .into_iter()
            .zip(&asks)
            .flat_map(|(answer, ask)| match answer {
                Some(Ok(frames)) => frames,
                Some(Err(error)) => vec![error.frame(ask.id.as_ref())],
                None => Vec::new(),
            })
            .collect()
    }

    /// Whether this connection may publish `ask`, by its scopes and the
    /// channel's namespace rule: the request to carry out if so.
    fn admit_publish<'a>(
        &self,
        ask: &'a PublishAsk<'_>,
    ) -> Result<PublishRequest<'a>, RequestError> {
        if !self.principal.scopes.contains(Scope::Publish) {
            return Err(RequestError::Forbidden(
                "this connection may not publish (scope)",
            ));
        }
        let channel = &ask.channel;
        let rule = self
            .node
            .namespaces
            .admit_publish(self.principal.user_id, channel, ask.data.get().len(), false)
            .map_err(|refusal| refused(refusal, "you may not publish to this channel"))?;
        Ok(PublishRequest {
            channel,
            data: ask.data,
            history: rule.history,
            idempotency_key: ask.idempotency_key.as_deref(),
        })
    }

    async fn presence(&mut self, id: Option<&RequestId>, channel: &ChannelName) -> Answer {
        let rule = self.readable_rule(channel)?;
        if !rule.presence {
            return Err(RequestError::PresenceDisabled);
        }
        // Who is in a channel is for those in it: being allowed to subscribe
        // is not enough, or anyone could watch a room without showing up in it.
        if !self.guard.channels.contains(channel) {
            return Err(RequestError::NotSubscribed);
        }
        let mut redis = self.node.redis.clone();
        let members = presence::members(&mut redis, &self.node.keys, channel)
            .await
            .map_err(|_| RequestError::Unavailable("presence is unavailable right now; retry"))?;
        Ok(vec![
            ServerFrame::Presence {
                id,
                channel: channel.as_str(),
                members: &members,
            }
            .to_json(),
        ])
    }

    /// Rewrites this connection's directory entry after its channels changed.
    /// Best effort: the directory is informational.
    async fn publish_directory_entry(&mut self) {
        let mut channels: Vec<&str> = self
            .guard
            .channels
            .iter()
            .map(ChannelName::as_str)
            .collect();
        channels.sort_unstable();
        let mut pipe = redis::pipe();
        crate::cluster::registry::add_directory_entry(
            &mut pipe,
            &self.node,
            &self.name,
            self.principal.user_id,
            self.control.connected_at,
            &channels,
        );
        let mut redis = self.node.redis.clone();
        if let Err(e) = pipe.query_async::<()>(&mut redis).await {
            tracing::debug!(error = %e, "could not update the connection directory");
        }
    }
}

fn ack_subscribed(
    id: Option<&RequestId>,
    channel: &ChannelName,
    recovered: Option<bool>,
    position: Option<&StreamPosition>,
) -> String {
    ServerFrame::Ack {
        id,
        channel: Some(channel.as_str()),
        recovered,
        epoch: position.map(|p| p.epoch.as_str()),
        offset: position.map(|p| p.offset),
        duplicate: None,
    }
    .to_json()
}
