//! A profile of the past (`since=SECONDS`, or `start=T&end=T`), answered at once from the
//! always-on recorder's buckets: the stretch asked, and the recorder's samples over it.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::engine::{self, Refusal};
use super::{Capture, CaptureError, Past};
use crate::util::utc;

/// The largest `since` accepted (a week; more than is kept answers what is kept).
pub(crate) const MAX_SINCE: u64 = 7 * 24 * 3600;

/// What `start` and `end` accept.
const TIME_ALLOWED: &str = "a Unix time in seconds (date +%s) no later than now, \
     or a negative number of seconds before now (-300)";

/// The stretch of the past asked, in wall-clock time (`to`: now when `None`).
#[derive(Debug, Clone)]
pub(crate) struct Stretch {
    pub(super) from: SystemTime,
    pub(super) to: Option<SystemTime>,
    /// The parameter that set the stretch, and its value (for errors).
    param: (&'static str, String),
    /// `end` as given.
    end_raw: String,
}

/// Why a stretch of the past cannot be answered: each names the parameter at fault, the
/// value given and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StretchError {
    /// `seconds` or `frequency` (`param`), which are for a live profile, given with
    /// `since`, `start` or `end`.
    WithLive { param: &'static str, value: String },
    /// `since` given with `start` or `end`.
    SinceAndRange { since: String },
    /// `since` is not a number of seconds from 1 to [`MAX_SINCE`].
    Since { value: String },
    /// `start` or `end` (`param`) is not a time allowed.
    Time { param: &'static str, value: String },
    /// `end` is not later than `start`.
    EndBeforeStart { end: String, start: SystemTime },
    /// The CPU recorder is off in this process.
    RecorderOff { param: &'static str, value: String },
    /// The stretch ends before what the recorder keeps begins.
    BeforeKept { end: String, kept_from: SystemTime },
}

impl StretchError {
    /// The parameter at fault, the value given and what it allows.
    pub(crate) fn parts(&self) -> (&'static str, &str, String) {
        match self {
            Self::WithLive { param, value } => (
                param,
                value,
                "nothing with since, start or end: those read the CPU recorder's past at its \
                 own rate; seconds and frequency are for a live profile"
                    .to_owned(),
            ),
            Self::SinceAndRange { since } => (
                "since",
                since,
                "since alone, or start and end, not both".to_owned(),
            ),
            Self::Since { value } => ("since", value, format!("an integer from 1 to {MAX_SINCE}")),
            Self::Time { param, value } => (param, value, TIME_ALLOWED.to_owned()),
            Self::EndBeforeStart { end, start } => (
                "end",
                end,
                format!("a time later than start ({})", utc(*start)),
            ),
            Self::RecorderOff { param, value } => (
                param,
                value,
                "nothing: the CPU recorder is off in this process (turn it on with \
                 diag::Config::with_cpu_recorder; the demo: --cpu-recorder 10m)"
                    .to_owned(),
            ),
            Self::BeforeKept { end, kept_from } => (
                "end",
                end,
                format!(
                    "a time after {}, where what the CPU recorder keeps begins",
                    utc(*kept_from)
                ),
            ),
        }
    }
}

impl fmt::Display for StretchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (param, value, allowed) = self.parts();
        write!(
            f,
            "invalid value for {param:?}: {value:?}; allowed: {allowed}"
        )
    }
}

impl std::error::Error for StretchError {}

/// The parameters that ask for the past, as given (`None`: absent).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Asked<'a> {
    pub(crate) since: Option<&'a str>,
    pub(crate) start: Option<&'a str>,
    pub(crate) end: Option<&'a str>,
    /// A live profile's parameter given too (`seconds` or `frequency`), and its value.
    pub(crate) live: Option<(&'static str, &'a str)>,
}

impl Asked<'_> {
    /// The stretch asked for, as of `now`; `None` when neither `since`, `start` nor `end`
    /// is given (a live profile).
    pub(crate) fn stretch(&self, now: SystemTime) -> Result<Option<Stretch>, StretchError> {
        let Self {
            since,
            start,
            end,
            live,
        } = *self;
        if since.is_none() && start.is_none() && end.is_none() {
            return Ok(None);
        }
        if let Some((param, value)) = live {
            let value = value.to_owned();
            return Err(StretchError::WithLive { param, value });
        }
        if let Some(raw) = since {
            if start.is_some() || end.is_some() {
                let since = raw.to_owned();
                return Err(StretchError::SinceAndRange { since });
            }
            let secs = match raw.trim().parse::<u64>() {
                Ok(s) if (1..=MAX_SINCE).contains(&s) => s,
                _ => return Err(StretchError::Since { value: raw.into() }),
            };
            return Ok(Some(Stretch {
                from: now - Duration::from_secs(secs),
                to: None,
                param: ("since", raw.to_owned()),
                end_raw: String::new(),
            }));
        }
        let from = match start {
            Some(raw) => time("start", raw, now)?,
            // Everything kept.
            None => now - Duration::from_secs(MAX_SINCE),
        };
        let to = end.map(|raw| time("end", raw, now)).transpose()?;
        if let (Some(to), Some(raw)) = (to, end) {
            if to <= from {
                let end = raw.to_owned();
                return Err(StretchError::EndBeforeStart { end, start: from });
            }
        }
        Ok(Some(Stretch {
            from,
            to,
            param: match (start, end) {
                (Some(raw), _) => ("start", raw.to_owned()),
                (None, raw) => ("end", raw.unwrap_or_default().to_owned()),
            },
            end_raw: end.unwrap_or_default().to_owned(),
        }))
    }
}

/// `start` or `end`: Unix seconds, or negative seconds before now.
fn time(param: &'static str, raw: &str, now: SystemTime) -> Result<SystemTime, StretchError> {
    let bad = || StretchError::Time {
        param,
        value: raw.to_owned(),
    };
    let v: i64 = raw.trim().parse().map_err(|_| bad())?;
    let t = if v < 0 {
        now.checked_sub(Duration::from_secs(v.unsigned_abs()))
    } else if v > 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(v.unsigned_abs()))
    } else {
        None
    }
    .ok_or_else(bad)?;
    // A second of slack for a client whose clock runs a little ahead.
    if t > now + Duration::from_secs(1) {
        return Err(bad());
    }
    Ok(t.min(now))
}

/// The recorder's samples over `stretch`.
/// `configured`: whether this router turned the recorder on (another one in the process
/// may have).
pub(super) async fn capture(stretch: Stretch, configured: bool) -> Result<Capture, CaptureError> {
    let recorded = if configured {
        engine::recorded(stretch.from, stretch.to).await?
    } else {
        Err(Refusal::Off)
    };
    let refused = match recorded {
        Ok(r) => {
            return Ok(Capture {
                window: r.window,
                ended_early: false,
                recorded: Some(Past {
                    kept_from: r.kept_from,
                    asked_from: r.short.then_some(stretch.from),
                }),
            });
        }
        Err(Refusal::Off) => StretchError::RecorderOff {
            param: stretch.param.0,
            value: stretch.param.1,
        },
        Err(Refusal::Before { kept_from }) => StretchError::BeforeKept {
            end: stretch.end_raw,
            kept_from,
        },
    };
    Err(CaptureError::Refused(refused))
}
