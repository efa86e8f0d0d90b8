//! The frames the Lua scripts publish are, byte for byte, those the Rust
//! writers produce: ws-node replays history with the Rust writer and reads
//! positions from live frames, so the two must never drift.

use futures_util::StreamExt as _;
use serde_json::value::RawValue;
use shared::channel::{ChannelName, HistoryLimits, Publisher, frame, history_page, publish};
use shared::keys::RedisKeys;
use std::time::Duration;

#[tokio::test]
async fn the_publish_script_writes_the_rust_message_frame() {
    let url = testkit::shared_redis_url();
    let keys = RedisKeys::new(&testkit::unique_prefix()).expect("prefix");
    let channel: ChannelName = "public:frames-1.a@b".parse().expect("channel");
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(keys.channel_live(&channel))
        .await
        .expect("subscribe");
    let mut messages = pubsub.on_message();
    let mut conn = shared::redis_conn::connect(&url).await.expect("redis");
    // Unicode, escapes and nested keys of the frame's own names in the data.
    let data = RawValue::from_string(
        r#"{"text":"h\u00e9 \"quoted\" é","epoch":"x","offset":1,"from":"me","n":[1,2.5,null]}"#
            .into(),
    )
    .expect("json");
    let mut next_frame = async || -> String {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a frame in time")
            .expect("subscribed");
        message.get_payload().expect("a string payload")
    };

    let publisher = Publisher {
        user_id: uuid::Uuid::nil(),
        username: "fr\"a\\mes".into(),
    };
    for history in [Some(HistoryLimits::default()), None] {
        let published = publish(&mut conn, &keys, &channel, &data, history, &publisher, None)
            .await
            .expect("published");
        assert_eq!(published.position.is_some(), history.is_some());
        let written_by_redis = next_frame().await;
        assert_eq!(
            written_by_redis,
            frame::message(
                &channel,
                published.position.as_ref(),
                &frame::sender(&publisher),
                data.get()
            )
        );
        assert_eq!(frame::position(&written_by_redis), published.position);
        // A replay rebuilds the same bytes from what history kept.
        if let Some(at) = &published.position {
            let page = history_page(
                &mut conn,
                &keys,
                &channel,
                at.offset - 1,
                10,
                shared::channel::PageSize {
                    messages: 10,
                    bytes: usize::MAX,
                },
                None,
            )
            .await
            .expect("history");
            let (offset, from, kept) = &page.messages[0];
            assert_eq!(*offset, at.offset);
            assert_eq!(
                frame::message(&channel, Some(at), from, kept),
                written_by_redis
            );
        }
    }
    let _: () = redis::pipe()
        .del(keys.channel_history(&channel))
        .del(keys.channel_meta(&channel))
        .query_async(&mut conn)
        .await
        .expect("cleanup");
}
