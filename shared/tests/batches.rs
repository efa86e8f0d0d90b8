//! Publishes and quota charges carried out together (`publish_many`,
//! `charge_publishes`) answer exactly as one at a time would, in order.

use serde_json::value::RawValue;
use shared::channel::{
    ChannelName, HistoryLimits, PublishError, PublishRequest, Publisher, publish_many,
};
use shared::keys::RedisKeys;
use shared::quota::{Charge, PublishQuota, QuotaError, charge_publishes};
use std::time::Duration;

const HISTORY: Option<HistoryLimits> = Some(HistoryLimits {
    max_len: 100,
    max_age: Duration::from_secs(60),
});

fn publisher() -> Publisher {
    Publisher {
        user_id: uuid::Uuid::new_v4(),
        username: "batcher".into(),
    }
}

fn channel(name: &str) -> ChannelName {
    name.parse().expect("channel")
}

fn json(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.into()).expect("json")
}

/// The offset of each outcome, `None` for an error.
fn offsets(outcomes: &[Result<shared::channel::Published, PublishError>]) -> Vec<Option<u64>> {
    outcomes
        .iter()
        .map(|o| {
            o.as_ref()
                .ok()
                .and_then(|p| p.position.as_ref().map(|p| p.offset))
        })
        .collect()
}

#[tokio::test]
async fn a_batch_publishes_in_order_and_answers_each_request() {
    // A private Redis: the test flushes its script cache.
    let redis = testkit::RedisServer::start();
    let conn = shared::redis_conn::connect(&redis.url())
        .await
        .expect("redis");
    publishes_in_order_and_answers_each_request(conn).await;
}

/// The same on a cluster, where the batch's channels live on different
/// shards. Flushing the shared cluster's scripts is safe for tests running
/// beside it: every script caller reloads on `NOSCRIPT`, as it must after a
/// failover to a replica that never saw the script.
#[tokio::test]
async fn a_batch_across_shards_publishes_in_order_and_answers_each_request() {
    let seeds = testkit::shared_cluster_urls()
        .iter()
        .map(|u| u.as_str().into())
        .collect();
    let conn = shared::redis_conn::open(&shared::redis_conn::RedisTarget::Cluster(seeds))
        .await
        .expect("the test cluster (scripts/ensure-services.sh starts it)");
    publishes_in_order_and_answers_each_request(conn).await;
}

async fn publishes_in_order_and_answers_each_request(mut conn: shared::redis_conn::Redis) {
    let keys = RedisKeys::new(&testkit::unique_prefix()).expect("prefix");
    let (a, b) = (channel("public:a"), channel("live:b"));
    let (one, deep) = (
        json("1"),
        json(&format!("{}{}", "[".repeat(70), "]".repeat(70))),
    );
    let request = |channel, data, history, idempotency_key| PublishRequest {
        channel,
        data,
        history,
        idempotency_key,
    };
    let publisher = publisher();
    let batch = [
        request(&a, &one, HISTORY, None),
        request(&b, &one, None, None),
        request(&a, &deep, HISTORY, None),
        request(&a, &one, HISTORY, Some("k1")),
        request(&b, &one, None, Some("k2")),
        request(&a, &one, HISTORY, Some("k1")),
        request(&a, &one, HISTORY, Some("bad key")),
        request(&a, &one, HISTORY, None),
    ];
    let outcomes = publish_many(&mut conn, &keys, &publisher, &batch).await;
    assert_eq!(
        offsets(&outcomes),
        [Some(1), None, None, Some(2), None, Some(2), None, Some(3)]
    );
    assert!(outcomes[1].as_ref().is_ok_and(|p| p.position.is_none()));
    assert!(matches!(outcomes[2], Err(PublishError::TooDeep)));
    assert!(matches!(
        outcomes[4],
        Err(PublishError::IdempotencyWithoutHistory)
    ));
    assert!(outcomes[5].as_ref().is_ok_and(|p| p.duplicate));
    assert!(matches!(
        outcomes[6],
        Err(PublishError::InvalidIdempotencyKey)
    ));

    // Redis lost its scripts (a restart, SCRIPT FLUSH): the batch still goes
    // through, once, in order.
    // (On a cluster, SCRIPT FLUSH goes to every node.)
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .expect("flush");
    let again = [
        request(&a, &one, HISTORY, None),
        request(&b, &one, None, None),
        request(&a, &one, HISTORY, None),
    ];
    let outcomes = publish_many(&mut conn, &keys, &publisher, &again).await;
    assert_eq!(offsets(&outcomes), [Some(4), None, Some(5)]);
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
}

#[tokio::test]
async fn a_batch_is_charged_as_one_publish_at_a_time_would_be() {
    let redis = testkit::RedisServer::start();
    let keys = RedisKeys::new(&testkit::unique_prefix()).expect("prefix");
    let mut conn = shared::redis_conn::connect(&redis.url())
        .await
        .expect("redis");
    let quota = PublishQuota {
        bytes: 100,
        new_channels: 2,
        window: Duration::from_secs(60),
    };
    let user = uuid::Uuid::new_v4();
    let (a, b, c, live) = (
        channel("public:a"),
        channel("public:b"),
        channel("public:c"),
        channel("live:x"),
    );
    let charge = |channel, with_history, bytes| Charge {
        channel,
        with_history,
        bytes,
    };
    // New channels: `a` counts once however often the batch names it; `c`
    // is one too many; a channel without history is never counted.
    let first = [
        charge(&a, true, 10),
        charge(&a, true, 10),
        charge(&b, true, 10),
        charge(&c, true, 10),
        charge(&live, false, 10),
    ];
    let results = charge_publishes(&mut conn, &keys, &quota, user, &first).await;
    let refused: Vec<bool> = results
        .iter()
        .map(|r| matches!(r, Err(QuotaError::Exceeded { .. })))
        .collect();
    assert_eq!(refused, [false, false, false, true, false]);
    // 40 bytes were charged (the refused 10 refunded): 60 are left, and a
    // publish that goes over them is refused while a smaller one after it fits.
    let second = [
        charge(&live, false, 50),
        charge(&live, false, 20),
        charge(&live, false, 10),
    ];
    let results = charge_publishes(&mut conn, &keys, &quota, user, &second).await;
    let refused: Vec<bool> = results
        .iter()
        .map(|r| matches!(r, Err(QuotaError::Exceeded { .. })))
        .collect();
    assert_eq!(refused, [false, true, false]);
    // All within the quota and no new channel: one round trip, all charged.
    let third = [charge(&live, false, 0), charge(&live, false, 0)];
    let results = charge_publishes(&mut conn, &keys, &quota, user, &third).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut admin = redis.admin().await;
    let used: u64 = redis::cmd("GET")
        .arg(keys.publish_quota(user, shared::keys::QuotaCounter::Bytes))
        .query_async(&mut admin)
        .await
        .expect("get");
    assert_eq!(used, 100);
}
