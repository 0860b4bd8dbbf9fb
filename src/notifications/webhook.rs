//! The webhook: one POST of the notification's JSON, never through a redirect, its URL
//! (which carries the token) never in a log line or an error.

use std::sync::Arc;
use std::time::Duration;

use super::message::{error_chain, first_line, truncate, Notification};
use super::NotifyError;
use crate::config::NotifyConfig;

/// How many characters of an error answer's body are kept in [`NotifyError::Status`].
const STATUS_BODY_CHARS: usize = 200;

/// The webhook's client and URL.
#[derive(Clone)]
pub(super) struct Webhook {
    client: reqwest::Client,
    url: Arc<url::Url>,
    pub(super) redacted: Arc<str>,
    timeout: Duration,
}

/// Shown without the webhook's path and query.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.redacted)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Webhook {
    /// The webhook of `[notify]`, if any.
    pub(super) fn new(cfg: &NotifyConfig) -> Result<Option<Webhook>, NotifyError> {
        let Some(url) = cfg.webhook.clone() else {
            return Ok(None);
        };
        let redacted = cfg.webhook_redacted().unwrap_or_else(|| "…".to_owned());
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            // A redirect would send the payload (and, for some clients, the token) to
            // another place than the one configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fieldtrack/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| NotifyError::Client {
                source: source.without_url(),
            })?;
        Ok(Some(Webhook {
            client,
            url: Arc::new(url),
            redacted: redacted.into(),
            timeout: cfg.timeout,
        }))
    }

    pub(super) async fn send_now(&self, n: Notification) -> Result<(), NotifyError> {
        let response = self
            .client
            .post(url::Url::clone(&self.url))
            .json(&n.to_json())
            .send()
            .await
            .map_err(|source| self.request_error(source))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(NotifyError::Status {
            webhook: self.redacted.to_string(),
            status,
            body: truncate(first_line(&body).as_str(), STATUS_BODY_CHARS),
        })
    }

    fn request_error(&self, source: reqwest::Error) -> NotifyError {
        // reqwest puts the full URL, token included, into its message.
        let source = source.without_url();
        let webhook = self.redacted.to_string();
        if source.is_timeout() {
            return NotifyError::TimedOut {
                webhook,
                timeout: self.timeout,
                source,
            };
        }
        NotifyError::Request {
            webhook,
            reason: error_chain(&source),
            source,
        }
    }
}
