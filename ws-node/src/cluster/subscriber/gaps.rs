//! Nothing lost between Redis and the node: for every channel with history
//! the subscriber keeps a cursor (epoch and last offset dispatched). A live
//! message that skips offsets makes it fetch the missing ones from history
//! first; after a reconnect it replays, per channel, everything published
//! while it was away. Where history cannot cover the gap (trimmed, or a new
//! epoch after Redis lost its data) members get an explicit
//! `{"type":"recovery","channel":…,"recovered":false}` frame: never a silent
//! gap. Duplicates (a message both replayed and live) are dropped by offset.

use super::Subscriber;
use shared::channel::{ChannelName, StreamPosition, frame};
use std::collections::HashSet;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The most messages replayed to fill one gap; a larger gap is reported as not recovered.
const MAX_GAP_FILL: u64 = 10_000;
/// Replayed messages are queued to members this many at a time, each batch
/// once every member has room for it (see
/// [`Hub::wait_for_room`](crate::cluster::hub::Hub::wait_for_room)).
const REPLAY_BATCH: usize = 256;
/// How long, in all, one gap's replay waits for members to make room before
/// treating those still without room as slow consumers.
const REPLAY_PATIENCE: Duration = Duration::from_secs(5);

/// Where a channel's dispatch stands. `epoch: None` means the channel had no
/// history when the node subscribed (any epoch that appears is new to us).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: Option<String>,
    pub offset: u64,
}

impl Subscriber {
    /// Decides whether a live history message is dispatched, first filling any
    /// gap before it from history. `false`: a duplicate, already dispatched.
    pub(super) async fn admit(&mut self, channel: &ChannelName, position: &StreamPosition) -> bool {
        let Some(cursor) = self.cursors.get(channel).cloned() else {
            return true;
        };
        match cursor.epoch.as_deref() {
            Some(epoch) if epoch == position.epoch => {
                if position.offset <= cursor.offset {
                    metrics::counter!(crate::telemetry::DUPLICATES_DROPPED).increment(1);
                    return false;
                }
                if position.offset > cursor.offset + 1 {
                    self.fill_live_gap(channel, position).await;
                }
                true
            }
            // The channel had no history when we subscribed: this epoch is its first.
            None => {
                if position.offset > 1 {
                    self.fill_live_gap(channel, position).await;
                }
                true
            }
            // A new epoch while we listened: Redis lost the history (flush, failover).
            Some(_) => {
                self.announce_unrecoverable(channel, "new epoch");
                true
            }
        }
    }

    /// Dispatches, from history, what came after the channel's cursor (and
    /// before `until`, the live message that revealed the gap, if any), a page
    /// at a time, moving the cursor along: memory holds one page, and a read
    /// error midway leaves the cursor after the last page dispatched, so a
    /// retry neither repeats nor skips. A gap history cannot cover is
    /// announced to the channel's members.
    async fn fill_gap(
        &mut self,
        channel: &ChannelName,
        until: Option<&StreamPosition>,
    ) -> redis::RedisResult<()> {
        let page_size = REPLAY_BATCH as u64;
        let mut after_id: Option<String> = None;
        // Pacing never holds the node (this task serves every channel) for
        // more than REPLAY_PATIENCE per gap: members still cramped then are
        // slow consumers, and queuing to them closes them (4008).
        let mut patience = REPLAY_PATIENCE;
        loop {
            let Some(cursor) = self.cursors.get(channel).cloned() else {
                return Ok(());
            };
            let history = shared::channel::history_page(
                &mut self.redis,
                &self.keys,
                channel,
                cursor.offset,
                MAX_GAP_FILL,
                // Node-wide and paced by its members' queues: no byte budget.
                shared::channel::PageSize {
                    messages: page_size,
                    bytes: usize::MAX,
                },
                after_id.as_deref(),
            )
            .await?;
            let Some(epoch) = history.epoch.clone() else {
                // No history at all now. If there was some before, it is lost.
                if cursor.epoch.is_some() {
                    self.announce_unrecoverable(channel, "the channel's history is gone");
                }
                self.cursors.insert(channel.clone(), Cursor::default());
                return Ok(());
            };
            let same_epoch = cursor.epoch.as_deref().is_none_or(|e| e == epoch);
            if !same_epoch || !history.covers_page(&epoch, cursor.offset, page_size) {
                let reason = if !same_epoch {
                    "new epoch"
                } else if cursor.offset > history.offset {
                    // Acknowledged writes Redis lost: a replica promoted
                    // before it had them (replication is asynchronous).
                    "history went back"
                } else {
                    "trimmed"
                };
                self.announce_unrecoverable(channel, reason);
                self.cursors.insert(
                    channel.clone(),
                    Cursor {
                        epoch: Some(epoch),
                        offset: history.offset,
                    },
                );
                return Ok(());
            }
            if !history.messages.is_empty() && !patience.is_zero() {
                let started = tokio::time::Instant::now();
                self.hub
                    .wait_for_room(channel, REPLAY_BATCH, patience)
                    .await;
                patience = patience.saturating_sub(started.elapsed());
            }
            let mut last = cursor.offset;
            let mut reached_until = false;
            for (offset, from, data) in &history.messages {
                if until.is_some_and(|u| *offset >= u.offset) {
                    reached_until = true;
                    break;
                }
                let position = StreamPosition {
                    epoch: epoch.clone(),
                    offset: *offset,
                };
                let frame = frame::message(channel, Some(&position), from, data);
                self.deliver(channel, Some(*offset), &Utf8Bytes::from(frame));
                last = *offset;
            }
            self.cursors.insert(
                channel.clone(),
                Cursor {
                    epoch: Some(epoch),
                    offset: last,
                },
            );
            if reached_until || history.messages.is_empty() || last >= history.offset {
                metrics::counter!(crate::telemetry::GAP_FILLS).increment(1);
                return Ok(());
            }
            after_id = history.last_id;
        }
    }

    /// Fills a gap revealed by a live message. A failed history read is
    /// retried briefly (the command connection may just be reconnecting); if
    /// history stays unreadable the members are told rather than left unaware.
    async fn fill_live_gap(&mut self, channel: &ChannelName, until: &StreamPosition) {
        let mut attempt = 0;
        loop {
            match self.fill_gap(channel, Some(until)).await {
                Ok(()) => return,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::debug!(error = %e, %channel, attempt, "retrying a history read");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, %channel, "could not read history to fill a gap");
                    self.announce_unrecoverable(channel, "history unreadable");
                    return;
                }
            }
        }
    }

    /// Tells a channel's local members that messages may be missing.
    fn announce_unrecoverable(&self, channel: &ChannelName, reason: &str) {
        tracing::warn!(
            %channel,
            reason,
            "history cannot fill a gap; telling the channel's members"
        );
        metrics::counter!(crate::telemetry::UNRECOVERABLE_GAPS).increment(1);
        let frame = crate::protocol::recovery_lost(channel.as_str());
        self.hub.dispatch_reset(channel, &Utf8Bytes::from(frame));
    }

    /// Records where each newly subscribed history channel stands, *before*
    /// subscribing: whatever is published between this read and the
    /// subscription shows up as a gap and is filled from history.
    pub(super) async fn start_cursors(
        &mut self,
        channels: &[&ChannelName],
    ) -> redis::RedisResult<()> {
        let names: Vec<&ChannelName> = channels
            .iter()
            .copied()
            .filter(|c| !self.cursors.contains_key(*c))
            .filter(|c| {
                self.namespaces
                    .rule_for(c)
                    .is_some_and(|r| r.history.is_some())
            })
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("HMGET")
                .arg(self.keys.channel_meta(name))
                .arg("epoch")
                .arg("seq");
        }
        let metas: Vec<(Option<String>, Option<u64>)> = pipe.query_async(&mut self.redis).await?;
        for (name, (epoch, seq)) in names.into_iter().zip(metas) {
            self.cursors.insert(
                name.clone(),
                Cursor {
                    epoch,
                    offset: seq.unwrap_or(0),
                },
            );
        }
        Ok(())
    }

    /// Before (re)subscribing: forget channels nobody here listens to any
    /// more and start cursors for channels new to the subscriber.
    pub(super) async fn prepare_cursors(
        &mut self,
        channels: &[(ChannelName, u64)],
    ) -> redis::RedisResult<()> {
        let live: Vec<&ChannelName> = channels.iter().map(|(c, _)| c).collect();
        let members: HashSet<&ChannelName> = live.iter().copied().collect();
        self.cursors.retain(|channel, _| members.contains(channel));
        self.start_cursors(&live).await
    }

    /// After (re)subscribing: replays, per channel, what was published since
    /// its cursor. A read error aborts; the caller reconnects (with backoff)
    /// and tries again, and the cursors make the retry resume where this left.
    pub(super) async fn replay_missed(&mut self) -> redis::RedisResult<()> {
        let cursors: Vec<(ChannelName, u64)> = self
            .cursors
            .iter()
            .map(|(c, k)| (c.clone(), k.offset))
            .collect();
        let mut replayed = 0;
        for (channel, before) in cursors {
            self.fill_gap(&channel, None).await?;
            let after = self.cursors.get(&channel).map_or(before, |c| c.offset);
            replayed += after.saturating_sub(before);
        }
        if replayed > 0 {
            tracing::info!(
                replayed,
                "replayed messages missed while the subscription was down"
            );
        }
        Ok(())
    }
}
