//! Recovery on subscribe: a `subscribe` with `since` is answered with every
//! message the client missed, from the channel's history, then live ones.
//! The replay is streamed: a page is read from Redis only once the previous
//! one is written, one page per turn of the connection's loop, so memory
//! holds one page (bounded in messages and in bytes) and a client that stops
//! reading is caught by the write deadline. The live copies of replayed
//! messages are skipped by offset (the connection's `floors`), so the
//! hand-over has no duplicate.

use super::{Connection, Ending};
use shared::channel::{ChannelName, HistorySince, StreamPosition, frame};
use std::time::Instant;

/// Messages read from history and written per page of a replay at most.
pub(super) const REPLAY_PAGE: u64 = 256;

/// About the most bytes of messages one page of a replay holds (one message
/// more at most): a page is one write, and what a replay keeps in memory.
pub(super) const REPLAY_PAGE_BYTES: usize = super::write::MAX_WRITE_BYTES;

/// How long a replay waits before asking again for a history read.
const HISTORY_READ_PACE: std::time::Duration = std::time::Duration::from_millis(50);

/// The rest of a `since` replay, sent a page at a time after the `ack`.
pub(super) struct Replay {
    pub channel: ChannelName,
    pub epoch: String,
    /// The last offset replayed so far.
    pub sent: u64,
    /// The channel's offset when the replay began; later ones arrive live.
    pub until: u64,
    /// The most messages history is asked for (the namespace's bound).
    pub cap: u64,
    /// The stream id of the last message replayed: the next page starts there.
    pub after_id: Option<String>,
}

impl Connection {
    /// Reads and writes the next page of the replay in progress.
    pub(super) async fn replay_step(&mut self) -> Result<(), Ending> {
        let Some(replay) = self.replay.take() else {
            return Ok(());
        };
        let control = self.control.clone();
        let frames = tokio::select! {
            biased;
            reason = control.closed() => return Err(Ending::Close(reason)),
            frames = Box::pin(self.replay_page(replay)) => frames,
        };
        self.send_all(frames).await?;
        // The client took a page (the write deadline bounds what one that
        // stopped reading can take): as good as a pong for the idle reaper,
        // since its pongs wait unread until the replay ends.
        self.last_heard = Instant::now();
        Ok(())
    }

    /// The next page of a replay; queues the rest, if any. If history no longer
    /// holds what comes next (trimmed meanwhile, or Redis lost it), the client
    /// is told with a `recovery` notice instead of being left with a gap.
    async fn replay_page(&mut self, replay: Box<Replay>) -> Vec<String> {
        // Pages share the connection's history-read allowance: a long replay
        // is paced, not refused (the client asked for all of it).
        while !self.take_history_read() {
            tokio::time::sleep(HISTORY_READ_PACE).await;
        }
        let mut redis = self.node.redis.clone();
        let page = shared::channel::history_page(
            &mut redis,
            &self.node.keys,
            &replay.channel,
            replay.sent,
            replay.cap,
            shared::channel::PageSize {
                messages: REPLAY_PAGE,
                bytes: REPLAY_PAGE_BYTES,
            },
            replay.after_id.as_deref(),
        )
        .await;
        match page {
            Ok(page) if page.covers_page(&replay.epoch, replay.sent, REPLAY_PAGE) => {
                self.take_page(replay, page)
            }
            _ => {
                metrics::counter!(crate::telemetry::UNRECOVERABLE_GAPS).increment(1);
                vec![crate::protocol::recovery_lost(replay.channel.as_str())]
            }
        }
    }

    /// The frames of one (checked) page of a replay, up to its `until`; queues
    /// the rest of the replay, if any.
    pub(super) fn take_page(&mut self, mut replay: Box<Replay>, page: HistorySince) -> Vec<String> {
        let mut frames = Vec::with_capacity(page.messages.len());
        for (offset, from, data) in &page.messages {
            if *offset > replay.until {
                break;
            }
            let at = StreamPosition {
                epoch: replay.epoch.clone(),
                offset: *offset,
            };
            frames.push(frame::message(&replay.channel, Some(&at), from, data));
            replay.sent = *offset;
        }
        if replay.sent < replay.until && !frames.is_empty() {
            replay.after_id = page.last_id;
            self.replay = Some(replay);
        }
        frames
    }
}
