//! What a notification says: the event, its fields, the one-line text for people and the
//! JSON body, shared by the webhook and email.

use serde::Serialize;

use crate::model::Color;

/// Where the machine's hostname is read, for the `host` field.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// How many characters of a message's first line go into `text`.
const TEXT_MESSAGE_CHARS: usize = 300;

/// What happened, as the `event` field says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A deployment converged: the image is live.
    Succeeded,
    /// A deployment attempt failed; production is as it was.
    Failed,
    /// A rollback asked for by an operator (`fieldtrack rollback`) converged.
    RolledBack,
    /// The new color failed during the drain and traffic went back to the previous image.
    AutoRollback,
    /// A canary step ended: passed, or failed (then an [`Event::AutoRollback`] follows when
    /// auto-rollback is on).
    CanaryStep,
}

impl Event {
    /// The `event` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Succeeded => "succeeded",
            Event::Failed => "failed",
            Event::RolledBack => "rolled_back",
            Event::AutoRollback => "auto_rollback",
            Event::CanaryStep => "canary_step",
        }
    }
}

/// One notification. Build it with [`Notification::new`] and struct update syntax:
///
/// ```
/// # use fieldtrack::notifications::{Event, Notification};
/// let n = Notification {
///     previous: Some("v1".into()),
///     ..Notification::new(Event::Succeeded, "api", "v2")
/// };
/// assert_eq!(n.text(), "✅ api deployed v2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    pub event: Event,
    pub app: String,
    /// The image this is about, as written in the desired file. For
    /// [`Event::AutoRollback`], the image that failed.
    pub image: String,
    /// The image live before. For [`Event::AutoRollback`], the image traffic went back to.
    pub previous: Option<String>,
    /// The color `image` ran in.
    pub color: Option<Color>,
    /// The image's digest (`sha256:...`) when known.
    pub digest: Option<String>,
    /// Why it failed or was rolled back; the first line goes into `text`.
    pub message: Option<String>,
    /// `by` from the desired file.
    pub by: Option<String>,
    /// `note` from the desired file.
    pub note: Option<String>,
    /// The desired generation.
    pub generation: Option<String>,
    /// How long the attempt took.
    pub duration_ms: Option<u64>,
    /// This machine's hostname.
    pub host: String,
    /// When the notification was made, RFC 3339.
    pub time: String,
}

/// What goes on the wire: the notification with its `text` in front.
#[derive(Serialize)]
struct Payload<'a> {
    text: String,
    #[serde(flatten)]
    notification: &'a Notification,
}

impl Notification {
    /// A notification of `event` for `image` of `app`, stamped with this host and now;
    /// every optional field empty.
    pub fn new(event: Event, app: impl Into<String>, image: impl Into<String>) -> Notification {
        Notification {
            event,
            app: app.into(),
            image: image.into(),
            previous: None,
            color: None,
            digest: None,
            message: None,
            by: None,
            note: None,
            generation: None,
            duration_ms: None,
            host: hostname(),
            time: crate::state::now_rfc3339(),
        }
    }

    /// A one-line summary for people, e.g. `✅ api deployed v2 (green)` or
    /// `❌ api: deploy of v2 failed: container exited during the health gate`.
    pub fn text(&self) -> String {
        let app = &self.app;
        let image = &self.image;
        let color = self.color.map(|c| format!(" ({c})")).unwrap_or_default();
        let reason = self
            .message
            .as_deref()
            .map(first_line)
            .filter(|line| !line.is_empty())
            .map(|line| format!(": {line}"))
            .unwrap_or_default();
        match self.event {
            Event::Succeeded => format!("✅ {app} deployed {image}{color}"),
            Event::Failed => format!("❌ {app}: deploy of {image} failed{reason}"),
            Event::RolledBack => match &self.previous {
                Some(previous) => {
                    format!("↩️ {app} rolled back from {previous} to {image}{color}")
                }
                None => format!("↩️ {app} rolled back to {image}{color}"),
            },
            Event::AutoRollback => match &self.previous {
                Some(previous) => {
                    format!("↩️ {app} auto-rolled back from {image} to {previous}{reason}")
                }
                None => format!("↩️ {app} auto-rolled back from {image}{reason}"),
            },
            Event::CanaryStep => format!("🐤 {app} canary of {image}{color}{reason}"),
        }
    }

    /// The JSON body POSTed to the webhook: every field plus `text`.
    pub fn to_json(&self) -> serde_json::Value {
        let payload = Payload {
            text: self.text(),
            notification: self,
        };
        // Strings, numbers and unit enums only: serializing cannot fail.
        serde_json::to_value(payload).unwrap_or_default()
    }
}

/// The trimmed first line of `message`, cut to [`TEXT_MESSAGE_CHARS`].
pub(super) fn first_line(message: &str) -> String {
    let line = message.trim().lines().next().unwrap_or("").trim_end();
    truncate(line, TEXT_MESSAGE_CHARS)
}

pub(super) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// This machine's hostname, or `"unknown"` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string(HOSTNAME_FILE)
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `error` and its sources in one line, skipping a source whose text is already there.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    crate::model::runtime::causes(error)
}

/// A deployment that succeeded, with every field set: what the webhook's and the email's
/// tests send.
#[cfg(test)]
pub(crate) fn sample() -> Notification {
    Notification {
        previous: Some("v1".into()),
        color: Some(crate::model::Color::Green),
        digest: Some("sha256:abc".into()),
        by: Some("ci".into()),
        note: Some("hotfix login".into()),
        generation: Some("g7".into()),
        duration_ms: Some(1234),
        ..Notification::new(Event::Succeeded, "api", "v2")
    }
}
