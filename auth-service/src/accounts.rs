//! User accounts in Postgres.

use crate::error::{Error, Result};
use crate::password::{PasswordHasher, validate_new_password};
use shared::scope::{Scope, Scopes};
use shared::secret::Secret;
use sqlx::PgPool;
use std::fmt;
use uuid::Uuid;

/// A normalised username: 1-64 characters of `a-z 0-9 _ . -`, stored lowercase,
/// so `Alice` and `alice` are one account.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let normalised = raw.trim().to_ascii_lowercase();
        let valid = (1..=64).contains(&normalised.len())
            && normalised.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if valid {
            Ok(Self(normalised))
        } else {
            Err("username must be 1-64 characters of letters, digits, '_', '.' or '-'")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A user as the rest of the service sees it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub password_hash: String,
    /// The scopes this user may give API keys they create themselves.
    pub key_scopes: Vec<String>,
    pub disabled_at: Option<time::OffsetDateTime>,
}

impl User {
    pub fn key_scopes(&self) -> Scopes {
        self.key_scopes
            .iter()
            .filter_map(|s| s.parse::<Scope>().ok())
            .collect()
    }
}

/// Creates a user. `key_scopes` bounds what keys the user may self-issue over HTTP.
pub async fn create_user(
    db: &PgPool,
    hasher: &PasswordHasher,
    username: &Username,
    password: &Secret,
    key_scopes: Scopes,
) -> Result<User> {
    validate_new_password(password.expose())
        .map_err(|m| Error::unprocessable("weak_password", m))?;
    let password_hash = hasher.hash(password).await?;
    let user = sqlx::query_as::<_, User>(
        "INSERT INTO users (id, username, password_hash, key_scopes) VALUES ($1, $2, $3, $4)
         ON CONFLICT (username) DO NOTHING
         RETURNING id, username, password_hash, key_scopes, disabled_at",
    )
    .bind(Uuid::new_v4())
    .bind(username.as_str())
    .bind(password_hash)
    .bind(key_scopes.to_strings())
    .fetch_optional(db)
    .await?;
    user.ok_or_else(|| Error::Conflict {
        code: "username_taken",
        message: format!("user {username} already exists"),
    })
}

pub async fn find_by_username(db: &PgPool, username: &Username) -> Result<Option<User>> {
    Ok(sqlx::query_as::<_, User>(
        "SELECT id, username, password_hash, key_scopes, disabled_at FROM users WHERE username = $1",
    )
    .bind(username.as_str())
    .fetch_optional(db)
    .await?)
}

pub async fn find_by_id(db: &PgPool, id: Uuid) -> Result<Option<User>> {
    Ok(sqlx::query_as::<_, User>(
        "SELECT id, username, password_hash, key_scopes, disabled_at FROM users WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Marks a user disabled in Postgres (no more logins); the rest is
/// [`crate::revocation::disable_user`]'s.
pub async fn set_disabled(db: impl sqlx::PgExecutor<'_>, user_id: Uuid) -> Result<()> {
    sqlx::query("UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE id = $1")
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_normalised() {
        assert_eq!(Username::parse(" Alice ").map(|u| u.0), Ok("alice".into()));
        assert!(Username::parse("").is_err());
        assert!(Username::parse("a b").is_err());
        assert!(Username::parse("é").is_err());
        assert!(Username::parse(&"a".repeat(65)).is_err());
    }
}
