//! Reading a channel's history after an offset.

use super::{ChannelName, StreamPosition};
use crate::keys::RedisKeys;
use std::sync::LazyLock;

/// Reads a channel's history after `since_offset`, atomically with its
/// current epoch and offset: the oldest `ARGV[3]` (page) of the messages
/// after it, and the stream id of the last one returned. The epoch and the
/// size of the gap are checked first, from the meta hash: a gap of more than
/// `ARGV[2]` (cap) messages is reported as not covered (no messages) without
/// reading it. The page itself is read from the entry of the first offset
/// wanted (ids are `<offset>-0`), or, if `ARGV[4]` is not empty, after that
/// stream id (the previous page's end): either way O(page), however long the
/// gap. The page ends early once its data reaches `ARGV[6]` bytes (it holds
/// at least one message); it is read in chunks of 32 entries, so that a page
/// of large messages cut short by its budget does not read the full count.
/// A history of another format version (`ARGV[5]`) covers nothing.
const HISTORY_SINCE: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if not epoch then
  return {'', 0, {}, ''}
end
local missing = seq - tonumber(ARGV[1])
if missing <= 0 or redis.call('HGET', KEYS[2], 'v') ~= ARGV[5]
    or (ARGV[4] == '' and missing > tonumber(ARGV[2])) then
  return {epoch, seq, {}, ''}
end
local from = (tonumber(ARGV[1]) + 1) .. '-0'
if ARGV[4] ~= '' then from = '(' .. ARGV[4] end
local want = tonumber(ARGV[3])
local budget = tonumber(ARGV[6])
local out = {}
local last_id = ''
local count = 0
local bytes = 0
while count < want and bytes < budget do
  local chunk = math.min(want - count, 32)
  local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', chunk)
  for i = 1, #entries do
    local id, fields = entries[i][1], entries[i][2]
    local d, f = 'null', 'null'
    for j = 1, #fields, 2 do
      if fields[j] == 'd' then d = fields[j + 1] end
      if fields[j] == 'f' then f = fields[j + 1] end
    end
    table.insert(out, string.match(id, '^(%d+)'))
    table.insert(out, f)
    table.insert(out, d)
    last_id = id
    count = count + 1
    bytes = bytes + #d
    if bytes >= budget then break end
  end
  if #entries < chunk then break end
  from = '(' .. last_id
end
return {epoch, seq, out, last_id}
"#;

static HISTORY_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(HISTORY_SINCE));

/// What a channel's history holds after a given offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistorySince {
    /// The channel's current epoch (`None`: the channel has no history at all,
    /// e.g. it was never published to, or Redis lost its data).
    pub epoch: Option<String>,
    /// The channel's current (latest) offset.
    pub offset: u64,
    /// Messages after the requested offset, oldest first, as
    /// `(offset, from, data)`: `from` is the frame's sender (JSON).
    pub messages: Vec<(u64, String, String)>,
    /// The stream id of the last message returned (where the next page of a
    /// [`history_page`] read continues); `None` if none was returned.
    pub last_id: Option<String>,
    /// Whether the page ended at its byte budget: it may then hold fewer
    /// messages than asked for although more follow.
    pub budget_reached: bool,
}

impl HistorySince {
    /// Whether the messages are exactly the first `page` after `since` in
    /// `epoch` (or all of them, if fewer remain; or as many as the page's
    /// byte budget took): a page read by [`history_page`] with nothing
    /// trimmed away.
    pub fn covers_page(&self, epoch: &str, since: u64, page: u64) -> bool {
        if self.epoch.as_deref() != Some(epoch) || since > self.offset {
            return false;
        }
        let expected = (self.offset - since).min(page);
        let count = self.messages.len() as u64;
        (count == expected || (self.budget_reached && 0 < count && count < expected))
            && self
                .messages
                .iter()
                .zip(since + 1..)
                .all(|((offset, ..), want)| *offset == want)
    }
}

/// Where a channel's history stands: its epoch and last offset, `None` if
/// it has none (never published to, or expired, or Redis lost it).
pub async fn current_position(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    channel: &ChannelName,
) -> redis::RedisResult<Option<StreamPosition>> {
    let (epoch, offset): (Option<String>, Option<u64>) = redis::cmd("HMGET")
        .arg(keys.channel_meta(channel))
        .arg("epoch")
        .arg("seq")
        .query_async(conn)
        .await?;
    Ok(epoch.map(|epoch| StreamPosition {
        epoch,
        offset: offset.unwrap_or(0),
    }))
}

/// How much one [`history_page`] read returns at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSize {
    /// Messages.
    pub messages: u64,
    /// Bytes of message data, about: a page ends with the message that
    /// reaches it.
    pub bytes: usize,
}

/// Reads a channel's history after `since_offset`, with its current epoch
/// and offset: the oldest `page.messages` messages after it, found without reading
/// the ones before (see `HISTORY_SINCE`). A replay is read a page at a time,
/// so memory holds one page, not the whole gap (up to `cap` messages; a
/// larger gap reads as not covered); a page's data stops at about
/// `page.bytes` (one message more at most), so that a page of large messages
/// is not many megabytes. Pass the previous page's `last_id` as `after_id`
/// to continue a replay.
pub async fn history_page(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    channel: &ChannelName,
    since_offset: u64,
    cap: u64,
    page: PageSize,
    after_id: Option<&str>,
) -> redis::RedisResult<HistorySince> {
    let (epoch, offset, flat, last_id): (String, u64, Vec<String>, String) = HISTORY_SCRIPT
        .key(keys.channel_history(channel))
        .key(keys.channel_meta(channel))
        .arg(since_offset)
        .arg(cap)
        .arg(page.messages.max(1))
        .arg(after_id.unwrap_or(""))
        .arg(super::publish::HISTORY_FORMAT)
        .arg(page.bytes.max(1))
        .invoke_async(conn)
        .await?;
    let messages: Vec<(u64, String, String)> = flat
        .chunks_exact(3)
        .filter_map(|entry| Some((entry[0].parse().ok()?, entry[1].clone(), entry[2].clone())))
        .collect();
    let bytes: usize = messages.iter().map(|(_, _, data)| data.len()).sum();
    Ok(HistorySince {
        epoch: (!epoch.is_empty()).then_some(epoch),
        offset,
        messages,
        last_id: (!last_id.is_empty()).then_some(last_id),
        budget_reached: bytes >= page.bytes.max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_needs_the_same_epoch_and_every_offset() {
        let history = HistorySince {
            epoch: Some("e".into()),
            offset: 5,
            messages: vec![(4, "f".into(), "4".into()), (5, "f".into(), "5".into())],
            last_id: None,
            budget_reached: false,
        };
        assert!(history.covers_page("e", 3, u64::MAX));
        assert!(!history.covers_page("other", 3, u64::MAX));
        assert!(
            !history.covers_page("e", 2, u64::MAX),
            "offset 3 was trimmed"
        );
        assert!(
            !history.covers_page("e", 6, u64::MAX),
            "an offset from the future"
        );
        let caught_up = HistorySince {
            messages: vec![],
            ..history
        };
        assert!(caught_up.covers_page("e", 5, u64::MAX));
        // A page: the oldest two of four missing messages.
        let page = HistorySince {
            epoch: Some("e".into()),
            offset: 9,
            messages: vec![(6, "f".into(), "6".into()), (7, "f".into(), "7".into())],
            last_id: None,
            budget_reached: false,
        };
        assert!(page.covers_page("e", 5, 2));
        assert!(!page.covers_page("e", 5, u64::MAX), "not all of them");
        assert!(!page.covers_page("e", 5, 3), "a page of 3 would hold 8 too");
        assert!(!page.covers_page("e", 4, 2), "offset 5 was trimmed");
        // A page that its byte budget ended early: fewer, but still from the start.
        let short = HistorySince {
            budget_reached: true,
            ..page
        };
        assert!(short.covers_page("e", 5, 3));
        assert!(!short.covers_page("e", 4, 3), "offset 5 was trimmed");
        let empty = HistorySince {
            messages: vec![],
            ..short
        };
        assert!(
            !empty.covers_page("e", 5, 3),
            "a budget never ends a page at 0"
        );
    }
}
