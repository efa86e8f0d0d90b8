//! Channel names (`shared::channel::ChannelName`), which every client frame
//! carries. The parser must accept exactly the names docs/PROTOCOL.md §6
//! describes, and an accepted name must survive every way it is passed on
//! (its string, `Display`, JSON) unchanged. Input that looks like a
//! `CHANNEL_NAMESPACES` list also goes through the namespace parser, whose
//! names must make valid channels.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::channel::ChannelName;
use shared::namespace::Namespaces;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.starts_with('[') {
        if let Ok(namespaces) = Namespaces::from_json(text) {
            for rule in namespaces.rules() {
                let channel: ChannelName = format!("{}:x", rule.name)
                    .parse()
                    .expect("a configured namespace makes valid channels");
                assert_eq!(
                    namespaces.rule_for(&channel).map(|r| &r.name),
                    Some(&rule.name)
                );
            }
        }
        return;
    }

    let parsed = text.parse::<ChannelName>();
    assert_eq!(parsed.is_ok(), documented(text), "{text:?}");
    let via_json = serde_json::from_value::<ChannelName>(serde_json::Value::from(text));
    assert_eq!(via_json.as_ref().ok(), parsed.as_ref().ok());
    let Ok(channel) = parsed else {
        return;
    };
    assert_eq!(channel.as_str(), text);
    assert_eq!(channel.to_string(), text);
    assert_eq!(format!("{}:{}", channel.namespace(), channel.name()), text);
    assert_eq!(
        channel.as_str().parse::<ChannelName>().as_ref(),
        Ok(&channel)
    );
    let json = serde_json::to_string(&channel).expect("serialises");
    assert_eq!(
        serde_json::from_str::<ChannelName>(&json).expect("re-reads"),
        channel
    );
    // The Redis Cluster hash tag `{…}` must stay ours.
    assert!(!text.contains(['{', '}']));
    let default_namespace = ["public", "user", "broadcast"].contains(&channel.namespace());
    assert_eq!(
        Namespaces::default().rule_for(&channel).is_some(),
        default_namespace
    );
});

/// docs/PROTOCOL.md §6: `namespace:name`, the namespace 1–32 characters of
/// `a-z 0-9 _ -`, the whole at most 128 characters, the name part (non-empty)
/// of `A-Z a-z 0-9 _ - . : @ = +`.
fn documented(text: &str) -> bool {
    let Some((namespace, name)) = text.split_once(':') else {
        return false;
    };
    (1..=32).contains(&namespace.chars().count())
        && namespace
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        && !name.is_empty()
        && text.chars().count() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:@=+".contains(c))
}
