//! Request extractors: JSON bodies with our error format, the caller's IP, and
//! the two ways to authenticate (session cookie, API key).

use crate::api_keys::VerifiedKey;
use crate::credential_gate::CredentialKind;
use crate::error::{Error, Result};
use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;
use shared::secret::TokenHash;
use shared::session::SessionRecord;
use std::net::{IpAddr, SocketAddr};
use uuid::Uuid;

/// Largest request body accepted (a publish carries up to 64 KiB of data),
/// enforced by [`body_bytes`], which every body extractor here goes through.
pub const MAX_BODY_BYTES: usize = 96 * 1024;

/// A JSON body, with every failure mapped to our error format: wrong content
/// type → 415, too large → 413, not JSON or not UTF-8 → 400, wrong shape → 422.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self> {
        let headers = req.headers().clone();
        let body = body_bytes(req, state.config.request_read_timeout()).await?;
        parse_json(&headers, &body).map(ApiJson)
    }
}

/// The raw body (for endpoints whose body is optional), with our error format.
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self> {
        body_bytes(req, state.config.request_read_timeout())
            .await
            .map(RawBody)
    }
}

/// How much of an oversized body is still read, and thrown away, before the
/// 413 goes out. Clients send the whole body before reading the answer; a
/// server that answers and closes mid-body leaves unread data behind, its OS
/// then resets the connection, and the client may see a broken connection
/// instead of the 413. Past this (or [`DRAIN_TIME`]) the connection is closed
/// regardless: nobody gets to make us read without bound.
const DRAIN_LIMIT_BYTES: usize = 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads the body, at most [`MAX_BODY_BYTES`] (a larger one is a 413), all
/// of it `within` (else a 408: a client trickling its body holds no
/// connection for long).
pub async fn body_bytes(req: Request, within: std::time::Duration) -> Result<Bytes> {
    let too_large = || Error::PayloadTooLarge {
        limit: MAX_BODY_BYTES,
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = req.into_body().into_data_stream();
    let read = async move {
        // Most bodies arrive in one chunk, which is returned as is (no copy).
        let mut first: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        let mut read = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::bad_request("unreadable_body", e.to_string()))?;
            read += chunk.len();
            if read > MAX_BODY_BYTES {
                drain(body, read).await;
                return Err(too_large());
            }
            if first.is_none() && joined.is_empty() {
                first = Some(chunk);
                continue;
            }
            if let Some(earlier) = first.take() {
                joined.extend_from_slice(&earlier);
            }
            joined.extend_from_slice(&chunk);
        }
        Ok(first.unwrap_or_else(|| joined.freeze()))
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| Error::BodyTimeout)?
}

/// Reads and discards the rest of an oversized body (see [`DRAIN_LIMIT_BYTES`]).
async fn drain(mut body: axum::body::BodyDataStream, mut read: usize) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len();
            if read > DRAIN_LIMIT_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Parses a JSON body after checking its content type. Every body is a JSON
/// object: serde would also read a struct from an array of its fields in
/// order (`["alice","password"]`), which no documented request is.
pub fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Error::UnsupportedMediaType);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = T::deserialize(&mut deserializer).map_err(json_error)?;
    deserializer.end().map_err(json_error)?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::unprocessable(
            "invalid_field",
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

fn json_error(e: serde_json::Error) -> Error {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => Error::unprocessable("invalid_field", e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => Error::bad_request(
            "malformed_json",
            format!("request body is not valid JSON: {e}"),
        ),
    }
}

/// A path parameter, with a malformed one (e.g. not UTF-8 after decoding)
/// answered in our error format: 400 `invalid_path`, not axum's plain text.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|e| Error::bad_request("invalid_path", e.body_text()))
    }
}

/// The client's IP: the socket peer, or, with `TRUST_PROXY_HEADERS` proxy
/// hops, the entry our outermost proxy appended to `X-Forwarded-For`
/// ([`shared::net::forwarded_client`]).
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        if let Some(ip) = shared::net::forwarded_client(
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes()),
            state.config.common.trust_proxy_headers,
        ) {
            return Ok(Self(ip));
        }
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| Self(addr.ip()))
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("server started without connect info")))
    }
}

/// A caller authenticated by the session cookie. For any method other than
/// GET/HEAD/OPTIONS the CSRF checks ([`crate::csrf`]) have passed too.
pub struct SessionUser {
    pub session: SessionRecord,
    pub hash: TokenHash,
    /// The request's `Origin`, already checked against the allowlist.
    pub origin: Option<String>,
}

impl FromRequestParts<AppState> for SessionUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let origin = if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            None
        } else {
            crate::csrf::check_browser_request(&parts.headers, &state.origins)?
        };
        let token = session_cookie_value(&parts.headers, state.config.common.cookie_name())
            .ok_or_else(Error::unauthenticated)?;
        let ClientIp(client) = ClientIp::from_request_parts(parts, state).await?;
        let (session, hash) = crate::sessions::authenticate(state, &token, client)
            .await?
            .ok_or_else(Error::unauthenticated)?;
        Ok(Self {
            session,
            hash,
            origin,
        })
    }
}

/// Whom a session cookie lets revoke all their sessions: the user of a live
/// session, or of one revoked within the idle timeout, so that retrying a
/// revoke-all whose Redis half failed completes it instead of answering 401.
/// The CSRF checks apply as for [`SessionUser`].
pub struct RevokingUser(pub Uuid);

impl FromRequestParts<AppState> for RevokingUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        match SessionUser::from_request_parts(parts, state).await {
            Ok(user) => Ok(Self(user.session.user_id)),
            Err(Error::Unauthenticated { .. }) => {
                let token = session_cookie_value(&parts.headers, state.config.common.cookie_name())
                    .filter(|t| shared::secret::looks_like_token(t))
                    .ok_or_else(Error::unauthenticated)?;
                let ClientIp(client) = ClientIp::from_request_parts(parts, state).await?;
                let hash = TokenHash::of(&token);
                let admitted = state
                    .credential_gate
                    .admit(state, client, CredentialKind::Session)
                    .await?;
                let owner = crate::sessions::recently_revoked_owner(
                    &state.db,
                    &hash,
                    state.config.session_idle_timeout_secs,
                )
                .await?;
                admitted.finish(owner.is_some(), &hash).await;
                owner.map(Self).ok_or_else(Error::unauthenticated)
            }
            Err(e) => Err(e),
        }
    }
}

/// The session cookie's value, if the request carries one (undecodable headers are ignored).
pub fn session_cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

/// A caller authenticated by `Authorization: Bearer <api key>`.
pub struct ApiKeyUser(pub VerifiedKey);

impl FromRequestParts<AppState> for ApiKeyUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let key = bearer_token(&parts.headers)?.ok_or_else(Error::unauthenticated)?;
        let ClientIp(client) = ClientIp::from_request_parts(parts, state).await?;
        let verified = state
            .api_keys
            .verify(state, &key, client)
            .await?
            .ok_or_else(Error::unauthenticated)?;
        Ok(Self(verified))
    }
}

/// The bearer token of an `Authorization` header: `Ok(None)` if there is no
/// such header, 401 if there is one we cannot read.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| Error::unauthenticated())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(Error::unauthenticated)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Error::unauthenticated());
    }
    Ok(Some(token.trim().to_owned()))
}

/// Either kind of caller, for endpoints that accept both. A request with an
/// `Authorization` header is judged by it alone (never falls back to the cookie).
pub enum Caller {
    Session(SessionUser),
    ApiKey(VerifiedKey),
}

impl Caller {
    pub fn user_id(&self) -> uuid::Uuid {
        match self {
            Self::Session(s) => s.session.user_id,
            Self::ApiKey(k) => k.user_id,
        }
    }

    pub fn username(&self) -> &str {
        match self {
            Self::Session(s) => &s.session.username,
            Self::ApiKey(k) => &k.username,
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        if parts.headers.contains_key(header::AUTHORIZATION) {
            let ApiKeyUser(key) = ApiKeyUser::from_request_parts(parts, state).await?;
            Ok(Self::ApiKey(key))
        } else {
            Ok(Self::Session(
                SessionUser::from_request_parts(parts, state).await?,
            ))
        }
    }
}
