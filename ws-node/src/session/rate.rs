//! The per-connection message rate (`CLIENT_MESSAGES_PER_SEC`, with a
//! burst), which every frame the client sends counts against: text, binary,
//! ping and pong alike. A limit that only counted requests would let a client
//! flood the node with pings (each read, and answered with a pong) or binary
//! frames (each answered with an error) for free.

use super::{Connection, Ending};
use crate::protocol::{CloseReason, RequestError};
use std::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Consecutive over-rate frames tolerated (each text or binary one answered
/// with an error) before closing with 4008.
const RATE_STRIKES: u32 = 10;

/// A token bucket: `rate` frames per second sustained, `burst` at once.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            updated: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.updated).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Connection {
    /// Counts one client frame against the message rate: `Ok(true)` to handle
    /// it, `Ok(false)` to drop it (over the rate, and answered if it was a
    /// text or binary frame), or how the connection ends (after
    /// [`RATE_STRIKES`] over-rate frames in a row, 4008). A close frame is not
    /// counted: it ends the connection anyway.
    pub(super) async fn within_rate(&mut self, message: &Message) -> Result<bool, Ending> {
        if matches!(message, Message::Close(_)) || self.bucket.try_take() {
            self.strikes = 0;
            return Ok(true);
        }
        self.strikes += 1;
        metrics::counter!(crate::telemetry::RATE_LIMITED_FRAMES).increment(1);
        if self.strikes > RATE_STRIKES {
            return Err(Ending::Close(CloseReason::RateExceeded));
        }
        // A control frame gets no `error` reply: it carried no request, and
        // answering a ping flood with text frames would only amplify it.
        if matches!(message, Message::Text(_) | Message::Binary(_)) {
            // Refused unread: the error carries no id.
            let reply = RequestError::RateLimited("too many messages; slow down").frame(None);
            self.send(Message::Text(reply.into())).await?;
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_throttles() {
        let mut bucket = TokenBucket::new(1, 3);
        assert!(bucket.try_take() && bucket.try_take() && bucket.try_take());
        assert!(!bucket.try_take());
    }
}
