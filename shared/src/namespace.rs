//! Channel namespaces and their rules, shared by ws-node (which enforces them
//! for clients) and auth-service (which needs the history policy when the
//! server publishes).
//!
//! Configured with `CHANNEL_NAMESPACES`, a JSON array that replaces the
//! defaults, e.g.
//! `[{"name":"public","subscribe":"any","publish":"any","history":{"max_len":1000,"max_age_secs":600},"presence":true}]`.
//! A channel whose namespace is not listed cannot be used at all.

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
}

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
            rules.push(NamespaceRule {
                name: r.name,
                subscribe: r.subscribe,
                publish: r.publish,
                history,
                presence: r.presence,
            });
        }
        Ok(Self { rules })
    }

    /// The rule for a channel's namespace, if that namespace is configured.
    pub fn rule_for(&self, channel: &ChannelName) -> Option<&NamespaceRule> {
        self.rules.iter().find(|r| r.name == channel.namespace())
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
}
