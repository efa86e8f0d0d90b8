//! The command connection on a Redis Cluster (the shared test cluster):
//! pipelines whose keys fall in several slots, as many of tessera's do,
//! answer in the order sent.

use shared::redis_conn::{Redis, RedisTarget};

async fn cluster() -> Redis {
    let seeds = testkit::shared_cluster_urls()
        .iter()
        .map(|u| u.as_str().into())
        .collect();
    shared::redis_conn::open(&RedisTarget::Cluster(seeds))
        .await
        .expect("the test cluster (scripts/ensure-services.sh starts it)")
}

#[tokio::test]
async fn a_pipeline_across_slots_answers_in_order() {
    let mut redis = cluster().await;
    assert!(redis.is_cluster());
    let prefix = testkit::unique_prefix();
    // Keys spread over the slots (and so the masters) of the cluster.
    let keys: Vec<String> = (0..40).map(|i| format!("{prefix}:k{i}")).collect();
    let mut pipe = redis::pipe();
    for (i, key) in keys.iter().enumerate() {
        pipe.cmd("SET").arg(key).arg(i).ignore();
        pipe.cmd("INCRBY").arg(key).arg(1000);
    }
    // A multi-key DEL across slots, which redis-rs splits by itself, and a
    // keyless command, both sent on their own.
    pipe.cmd("DEL").arg(&keys[..20]);
    pipe.cmd("PING");
    for key in &keys {
        pipe.cmd("EXISTS").arg(key);
    }
    let (incremented, deleted, pong, exists): (Vec<i64>, u64, String, Vec<u8>) = {
        let replies: Vec<redis::Value> = pipe.query_async(&mut redis).await.expect("pipeline");
        let mut replies = replies.into_iter();
        let incremented = replies
            .by_ref()
            .take(40)
            .map(|v| redis::from_redis_value(v).expect("int"))
            .collect();
        let deleted = redis::from_redis_value(replies.next().expect("del")).expect("int");
        let pong = redis::from_redis_value(replies.next().expect("ping")).expect("pong");
        let exists = replies
            .map(|v| redis::from_redis_value(v).expect("int"))
            .collect();
        (incremented, deleted, pong, exists)
    };
    assert_eq!(incremented, (0..40).map(|i| i + 1000).collect::<Vec<_>>());
    assert_eq!(deleted, 20);
    assert_eq!(pong, "PONG");
    let expected: Vec<u8> = (0..40).map(|i| u8::from(i >= 20)).collect();
    assert_eq!(exists, expected);
    let _: () = redis::cmd("DEL")
        .arg(&keys[20..])
        .query_async(&mut redis)
        .await
        .expect("cleanup");
}

/// A transaction cannot be split: one that crosses slots is Redis's
/// `CROSSSLOT` error, not a silent partial run.
#[tokio::test]
async fn a_transaction_across_slots_is_refused() {
    let mut redis = cluster().await;
    let prefix = testkit::unique_prefix();
    let result: redis::RedisResult<()> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(format!("{prefix}:a"))
        .arg(1)
        .ignore()
        .cmd("SET")
        .arg(format!("{prefix}:b"))
        .arg(1)
        .ignore()
        .query_async(&mut redis)
        .await;
    assert!(result.is_err(), "{result:?}");
}
