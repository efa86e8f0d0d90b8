//! Channel namespaces and their rules, shared by ws-node (which enforces them
//! for clients) and auth-service (which needs the history policy when the
//! server publishes).
//!
//! Configured with `CHANNEL_NAMESPACES`, a JSON array that replaces the
//! defaults, e.g.
//! `[{"name":"public","subscribe":"any","publish":"any","history":{"max_len":1000,"max_age_secs":600},"presence":true}]`.
//! A channel whose namespace is not listed cannot be used at all.
//!
//! Two optional fields let operators bound what clients can make Redis hold
//! in a namespace: `"names"`, a regular expression (regex-lite syntax) that
//! the part after `namespace:` must match in full (e.g. `"lobby|room-[0-9]{1,4}"`),
//! and `"max_message_bytes"`, a cap on a message's `data` below the global
//! one.

use crate::channel::{ChannelName, HistoryLimits};
use serde::Deserialize;
use std::time::Duration;

/// Who may do something on a channel of a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Any authenticated connection (subject to its scopes).
    Any,
    /// Only the user whose id is the channel's name (`user:<user id>`).
    Owner,
    /// No client: only the server, through auth-service's publish API.
    Server,
}

impl Access {
    /// Whether a client acting for `user_id` (a socket, or an API key with the
    /// client-side `publish` scope) is let in on `channel` by this rule.
    pub fn admits(self, user_id: uuid::Uuid, channel: &ChannelName) -> bool {
        match self {
            Self::Any => true,
            Self::Owner => channel.name() == user_id.to_string(),
            Self::Server => false,
        }
    }
}

/// Why a namespace refuses a subscription or a publish; each service words
/// it for its own clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No namespace of that name is configured.
    UnknownNamespace,
    /// The namespace's access does not admit this user.
    NotAdmitted,
    /// The namespace does not accept that channel name (`names`).
    NameNotAccepted,
    /// The data is larger than the namespace's `max_message_bytes`.
    TooLarge { limit: usize },
}

/// The rules of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRule {
    pub name: String,
    pub subscribe: Access,
    pub publish: Access,
    /// `None` turns history (and with it recovery) off for the namespace.
    pub history: Option<HistoryLimits>,
    /// Whether members are tracked and join/leave events sent.
    pub presence: bool,
    /// The names (after `namespace:`) the namespace accepts; `None`: any.
    pub names: Option<NamePattern>,
    /// The largest `data` a message may carry here; `None`: the global limit.
    pub max_message_bytes: Option<usize>,
}

impl NamespaceRule {
    /// Whether the namespace accepts `channel`'s name (its namespace is this one).
    pub fn accepts_name(&self, channel: &ChannelName) -> bool {
        self.names
            .as_ref()
            .is_none_or(|pattern| pattern.regex.is_match(channel.name()))
    }

    /// Whether `data` of `len` bytes fits this namespace's message cap.
    pub fn fits(&self, len: usize) -> bool {
        self.max_message_bytes.is_none_or(|max| len <= max)
    }
}

/// A namespace's `"names"` pattern, compiled once, matched against the whole
/// name.
#[derive(Clone, Debug)]
pub struct NamePattern {
    source: String,
    regex: regex_lite::Regex,
}

impl NamePattern {
    fn new(source: &str) -> Result<Self, regex_lite::Error> {
        Ok(Self {
            source: source.to_owned(),
            regex: regex_lite::Regex::new(&format!("^(?:{source})$"))?,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for NamePattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for NamePattern {}

/// The configured namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespaces {
    rules: Vec<NamespaceRule>,
}

impl Default for Namespaces {
    /// `public:` (anyone joins and publishes), `user:<id>` (only that user joins;
    /// only the server writes), `broadcast:` (anyone joins; only the server writes).
    /// History is on for all three; presence for `public:`.
    fn default() -> Self {
        let history = Some(HistoryLimits::default());
        let rule = |name: &str, subscribe, publish, presence| NamespaceRule {
            name: name.to_owned(),
            subscribe,
            publish,
            history,
            presence,
            names: None,
            max_message_bytes: None,
        };
        Self {
            rules: vec![
                rule("public", Access::Any, Access::Any, true),
                rule("user", Access::Owner, Access::Server, false),
                rule("broadcast", Access::Any, Access::Server, false),
            ],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NamespaceConfigError {
    #[error("CHANNEL_NAMESPACES is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "CHANNEL_NAMESPACES: invalid namespace name {0:?} (lowercase letters, digits, '-', '_')"
    )]
    Name(String),
    #[error("CHANNEL_NAMESPACES: namespace {0:?} is listed twice")]
    Duplicate(String),
    #[error("CHANNEL_NAMESPACES: history of {0:?} needs max_len >= 1 and max_age_secs >= 1")]
    History(String),
    #[error("CHANNEL_NAMESPACES: names of {0:?} is not a valid regular expression: {1}")]
    Names(String, regex_lite::Error),
    #[error("CHANNEL_NAMESPACES: max_message_bytes of {0:?} must be at least 1")]
    MaxMessageBytes(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleJson {
    name: String,
    subscribe: Access,
    publish: Access,
    #[serde(default)]
    history: Option<HistoryJson>,
    #[serde(default)]
    presence: bool,
    #[serde(default)]
    names: Option<String>,
    #[serde(default)]
    max_message_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryJson {
    max_len: u64,
    max_age_secs: u64,
}

impl Namespaces {
    /// Parses the `CHANNEL_NAMESPACES` JSON format described in the module docs.
    pub fn from_json(json: &str) -> Result<Self, NamespaceConfigError> {
        let parsed: Vec<RuleJson> = serde_json::from_str(json)?;
        let mut rules: Vec<NamespaceRule> = Vec::with_capacity(parsed.len());
        for r in parsed {
            // The name must be a whole channel's namespace: `a:b` would pass
            // as `a:b:x` and then match no channel (whose namespace is `a`).
            let as_channel = format!("{}:x", r.name).parse::<ChannelName>();
            if !as_channel.is_ok_and(|c| c.namespace() == r.name) {
                return Err(NamespaceConfigError::Name(r.name));
            }
            if rules.iter().any(|existing| existing.name == r.name) {
                return Err(NamespaceConfigError::Duplicate(r.name));
            }
            let history = match r.history {
                None => None,
                Some(h) if h.max_len >= 1 && h.max_age_secs >= 1 => Some(HistoryLimits {
                    max_len: h.max_len,
                    max_age: Duration::from_secs(h.max_age_secs),
                }),
                Some(_) => return Err(NamespaceConfigError::History(r.name)),
            };
            let names = match r.names.as_deref().map(NamePattern::new) {
                None => None,
                Some(Ok(pattern)) => Some(pattern),
                Some(Err(e)) => return Err(NamespaceConfigError::Names(r.name, e)),
            };
            if r.max_message_bytes == Some(0) {
                return Err(NamespaceConfigError::MaxMessageBytes(r.name));
            }
            rules.push(NamespaceRule {
                name: r.name,
                subscribe: r.subscribe,
                publish: r.publish,
                history,
                presence: r.presence,
                names,
                max_message_bytes: r.max_message_bytes,
            });
        }
        Ok(Self { rules })
    }

    /// The rule for a channel's namespace, if that namespace is configured.
    pub fn rule_for(&self, channel: &ChannelName) -> Option<&NamespaceRule> {
        self.rules.iter().find(|r| r.name == channel.namespace())
    }

    /// The rule of `channel` if `user_id` may subscribe to it: its namespace
    /// is configured, admits the user, and accepts the name.
    pub fn admit_subscribe(
        &self,
        user_id: uuid::Uuid,
        channel: &ChannelName,
    ) -> Result<&NamespaceRule, Refusal> {
        let rule = self.rule_for(channel).ok_or(Refusal::UnknownNamespace)?;
        if !rule.subscribe.admits(user_id, channel) {
            return Err(Refusal::NotAdmitted);
        }
        if !rule.accepts_name(channel) {
            return Err(Refusal::NameNotAccepted);
        }
        Ok(rule)
    }

    /// The rule of `channel` if `user_id` may publish `len` bytes of data to
    /// it: as [`Self::admit_subscribe`], by the namespace's `publish` access
    /// (which a backend allowed to publish anywhere, `anywhere`, bypasses),
    /// and within its message size. Every publish path asks this, so the
    /// rules cannot differ between a socket and HTTP.
    pub fn admit_publish(
        &self,
        user_id: uuid::Uuid,
        channel: &ChannelName,
        len: usize,
        anywhere: bool,
    ) -> Result<&NamespaceRule, Refusal> {
        let rule = self.rule_for(channel).ok_or(Refusal::UnknownNamespace)?;
        if !anywhere && !rule.publish.admits(user_id, channel) {
            return Err(Refusal::NotAdmitted);
        }
        if !rule.accepts_name(channel) {
            return Err(Refusal::NameNotAccepted);
        }
        match rule.max_message_bytes {
            Some(limit) if !rule.fits(len) => Err(Refusal::TooLarge { limit }),
            _ => Ok(rule),
        }
    }

    pub fn rules(&self) -> &[NamespaceRule] {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let ns = Namespaces::default();
        let public = ns
            .rule_for(&"public:a".parse().expect("valid"))
            .expect("public");
        assert_eq!(
            (public.subscribe, public.publish),
            (Access::Any, Access::Any)
        );
        let user = ns
            .rule_for(&"user:1".parse().expect("valid"))
            .expect("user");
        assert_eq!(
            (user.subscribe, user.publish),
            (Access::Owner, Access::Server)
        );
        assert!(ns.rule_for(&"other:a".parse().expect("valid")).is_none());
    }

    #[test]
    fn operators_restrict_names_and_message_sizes_per_namespace() {
        let namespaces = Namespaces::from_json(
            r#"[{"name":"chat","subscribe":"any","publish":"any","names":"lobby|room-[0-9]{1,4}","max_message_bytes":512},
                {"name":"open","subscribe":"any","publish":"any"}]"#,
        )
        .expect("valid");
        let rule = |c: &str| {
            let channel: ChannelName = c.parse().expect("name");
            let rule = namespaces.rule_for(&channel).expect("rule").clone();
            (rule, channel)
        };
        let (chat, lobby) = rule("chat:lobby");
        assert!(chat.accepts_name(&lobby));
        assert!(chat.accepts_name(&rule("chat:room-42").1));
        // Matched in full, not as a substring.
        assert!(!chat.accepts_name(&rule("chat:lobby2").1));
        assert!(!chat.accepts_name(&rule("chat:room-12345").1));
        assert!(!chat.accepts_name(&rule("chat:x-lobby").1));
        assert!(chat.fits(512) && !chat.fits(513));
        let (open, anything) = rule("open:whatever.you@like");
        assert!(open.accepts_name(&anything) && open.fits(1 << 20));
        for bad in [
            r#"[{"name":"a","subscribe":"any","publish":"any","names":"("}]"#,
            r#"[{"name":"a","subscribe":"any","publish":"any","max_message_bytes":0}]"#,
        ] {
            assert!(Namespaces::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn access_admits_clients_by_rule() {
        let me = uuid::Uuid::new_v4();
        let mine: ChannelName = format!("user:{me}").parse().expect("name");
        let theirs: ChannelName = format!("user:{}", uuid::Uuid::new_v4())
            .parse()
            .expect("name");
        assert!(Access::Any.admits(me, &theirs));
        assert!(Access::Owner.admits(me, &mine));
        assert!(!Access::Owner.admits(me, &theirs));
        assert!(!Access::Server.admits(me, &mine));
    }

    #[test]
    fn parses_and_validates_json() {
        let ns = Namespaces::from_json(
            r#"[{"name":"chat","subscribe":"any","publish":"any","history":{"max_len":5,"max_age_secs":60},"presence":true},
                {"name":"feed","subscribe":"any","publish":"server"}]"#,
        )
        .expect("valid");
        assert_eq!(ns.rules().len(), 2);
        assert_eq!(ns.rules()[0].history.map(|h| h.max_len), Some(5));
        assert!(ns.rules()[1].history.is_none());
        assert!(
            Namespaces::from_json(r#"[{"name":"Bad","subscribe":"any","publish":"any"}]"#).is_err()
        );
        assert!(Namespaces::from_json(r#"[{"name":"a","subscribe":"any","publish":"any"},{"name":"a","subscribe":"any","publish":"any"}]"#).is_err());
        // Caught by the channel_name fuzz target: a colon made a namespace
        // that no channel could ever be in.
        assert!(matches!(
            Namespaces::from_json(r#"[{"name":"a:b","subscribe":"any","publish":"any"}]"#),
            Err(NamespaceConfigError::Name(name)) if name == "a:b"
        ));
        assert!(
            Namespaces::from_json(r#"[{"name":"a","subscribe":"all","publish":"any"}]"#).is_err()
        );
        assert!(
            Namespaces::from_json(r#"[{"name":"a","subscribe":"any","publish":"any","extra":1}]"#)
                .is_err()
        );
    }

    #[test]
    fn admission_checks_namespace_access_name_and_size_in_that_order() {
        let ns = Namespaces::from_json(
            r#"[{"name":"chat","subscribe":"any","publish":"any","names":"room-[0-9]+","max_message_bytes":8},
                {"name":"user","subscribe":"owner","publish":"server"}]"#,
        )
        .expect("valid");
        let me = uuid::Uuid::new_v4();
        let channel = |name: &str| -> ChannelName { name.parse().expect("valid") };
        let mine = channel(&format!("user:{me}"));
        assert_eq!(
            ns.admit_subscribe(me, &channel("nope:a")).err(),
            Some(Refusal::UnknownNamespace)
        );
        assert!(ns.admit_subscribe(me, &mine).is_ok());
        assert_eq!(
            ns.admit_subscribe(uuid::Uuid::new_v4(), &mine).err(),
            Some(Refusal::NotAdmitted)
        );
        assert_eq!(
            ns.admit_publish(me, &mine, 1, false).err(),
            Some(Refusal::NotAdmitted)
        );
        assert!(ns.admit_publish(me, &mine, 1, true).is_ok());
        assert_eq!(
            ns.admit_publish(me, &channel("chat:lobby"), 100, false)
                .err(),
            Some(Refusal::NameNotAccepted)
        );
        assert_eq!(
            ns.admit_publish(me, &channel("chat:room-1"), 9, false)
                .err(),
            Some(Refusal::TooLarge { limit: 8 })
        );
        assert!(
            ns.admit_publish(me, &channel("chat:room-1"), 8, false)
                .is_ok()
        );
    }
}
