//! Permission scopes carried by API keys and tickets.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Mint tickets and open WebSocket connections.
    Connect,
    /// Publish where the namespace rules let the credential's user write, as a
    /// client: over a socket, or through `POST /v1/publish` with an API key
    /// (with the default namespaces, `public:` channels only).
    Publish,
    /// Operate on other users' connections (server control API).
    Admin,
    /// Publish to any channel of a configured namespace through
    /// `POST /v1/publish`, including the server-only `user:` and `broadcast:`
    /// channels: the backend's scope. Only an operator grants it
    /// (`auth-service api-key create … --scopes publish_any`); it is never
    /// self-issued over HTTP, and gives nothing more on a socket.
    PublishAny,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::Connect,
        Scope::Publish,
        Scope::Admin,
        Scope::PublishAny,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Publish => "publish",
            Self::Admin => "admin",
            Self::PublishAny => "publish_any",
        }
    }

    /// Whether a user may give it to a key they create over HTTP (given the
    /// account allows it); `publish_any` comes from an operator only.
    pub fn self_issuable(self) -> bool {
        !matches!(self, Self::PublishAny)
    }

    fn bit(self) -> u8 {
        match self {
            Self::Connect => 1,
            Self::Publish => 2,
            Self::Admin => 4,
            Self::PublishAny => 8,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown scope {0:?}: expected one of connect, publish, admin, publish_any")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

/// A set of scopes; serialised as a sorted JSON list such as `["connect","publish"]`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Vec<Scope>", into = "Vec<Scope>")]
pub struct Scopes(u8);

impl Scopes {
    pub const NONE: Scopes = Scopes(0);

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn with(self, scope: Scope) -> Self {
        Self(self.0 | scope.bit())
    }

    /// Whether every scope in `other` is also in `self`.
    pub fn covers(self, other: Scopes) -> bool {
        other.0 & !self.0 == 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    pub fn to_strings(self) -> Vec<String> {
        self.iter().map(|s| s.as_str().to_owned()).collect()
    }

    /// Parses a comma-separated list such as `connect,publish`.
    pub fn parse_list(list: &str) -> Result<Self, UnknownScope> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Scope::from_str)
            .collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        iter.into_iter().fold(Scopes::NONE, Scopes::with)
    }
}

impl From<Vec<Scope>> for Scopes {
    fn from(v: Vec<Scope>) -> Self {
        v.into_iter().collect()
    }
}

impl From<Scopes> for Vec<Scope> {
    fn from(s: Scopes) -> Self {
        s.iter().collect()
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations_and_serde() {
        let s = Scopes::parse_list("publish, connect").expect("valid");
        assert!(s.contains(Scope::Connect) && s.contains(Scope::Publish));
        assert!(!s.contains(Scope::Admin));
        assert!(s.covers(Scopes::NONE.with(Scope::Connect)));
        assert!(!s.covers(Scopes::NONE.with(Scope::Admin)));
        assert_eq!(
            serde_json::to_string(&s).expect("json"),
            r#"["connect","publish"]"#
        );
        let back: Scopes =
            serde_json::from_str(r#"["publish","connect","publish"]"#).expect("json");
        assert_eq!(back, s);
        assert!(serde_json::from_str::<Scopes>(r#"["root"]"#).is_err());
        assert_eq!(
            Scopes::parse_list("connect,root"),
            Err(UnknownScope("root".into()))
        );
    }
}
