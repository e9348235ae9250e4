//! `/profile?since=SECONDS` and `/profile?start=T&end=T`: a profile of the past, answered
//! at once from the always-on recorder's buckets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::engine::{self, Refusal};
use super::{Capture, Past, engine_error};
use crate::error::ApiError;
use crate::params::Params;
use crate::util::utc;

/// The largest `since` accepted (a week; more than is kept answers what is kept).
const MAX_SINCE: u64 = 7 * 24 * 3600;

/// What `start` and `end` accept.
const TIME_ALLOWED: &str = "a Unix time in seconds (date +%s) no later than now, \
     or a negative number of seconds before now (-300)";

/// The stretch of the past asked, in wall-clock time (`to`: now when `None`).
#[derive(Debug, Clone)]
pub(super) struct Stretch {
    from: SystemTime,
    to: Option<SystemTime>,
    /// The parameter that set the stretch, and its value (for errors).
    param: (&'static str, String),
    /// `end` as given.
    end_raw: String,
}

/// The stretch `since`, `start` or `end` ask for; `None` when none is given (a live
/// profile).
pub(super) fn stretch(params: &Params) -> Result<Option<Stretch>, ApiError> {
    let since = params.get("since");
    let start = params.get("start");
    let end = params.get("end");
    if since.is_none() && start.is_none() && end.is_none() {
        return Ok(None);
    }
    for live in ["seconds", "frequency"] {
        if let Some(v) = params.get(live) {
            return Err(ApiError::bad_param(
                if live == "seconds" {
                    "seconds"
                } else {
                    "frequency"
                },
                v,
                "nothing with since, start or end: those read the CPU recorder's past at its \
                 own rate; seconds and frequency are for a live profile",
            ));
        }
    }
    let now = SystemTime::now();
    if let Some(raw) = since {
        if start.is_some() || end.is_some() {
            return Err(ApiError::bad_param(
                "since",
                raw,
                "since alone, or start and end, not both",
            ));
        }
        let secs = params.int_in("since", 0, 1, MAX_SINCE)?;
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
            return Err(ApiError::bad_param(
                "end",
                raw,
                format!("a time later than start ({})", utc(from)),
            ));
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

/// `start` or `end`: Unix seconds, or negative seconds before now.
fn time(name: &'static str, raw: &str, now: SystemTime) -> Result<SystemTime, ApiError> {
    let bad = || ApiError::bad_param(name, raw, TIME_ALLOWED);
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
pub(super) async fn capture(stretch: Stretch, configured: bool) -> Result<Capture, ApiError> {
    let recorded = if configured {
        engine::recorded(stretch.from, stretch.to)
            .await
            .map_err(engine_error)?
    } else {
        Err(Refusal::Off)
    };
    match recorded {
        Ok(r) => Ok(Capture {
            window: r.window,
            ended_early: false,
            recorded: Some(Past {
                kept_from: r.kept_from,
                asked_from: r.short.then_some(stretch.from),
            }),
        }),
        Err(Refusal::Off) => Err(ApiError::bad_param(
            stretch.param.0,
            stretch.param.1,
            "nothing: the CPU recorder is off in this process (turn it on with \
             diag::Config::with_cpu_recorder; the demo: --cpu-recorder 10m)",
        )),
        Err(Refusal::Before { kept_from }) => Err(ApiError::bad_param(
            "end",
            stretch.end_raw,
            format!(
                "a time after {}, where what the CPU recorder keeps begins",
                utc(kept_from)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(q: &str) -> String {
        match stretch(&Params::parse(Some(q))) {
            Err(e) => e.message(),
            Ok(s) => panic!("{q}: accepted as {s:?}"),
        }
    }

    #[test]
    fn no_recorder_parameter_is_a_live_profile() {
        assert!(matches!(
            stretch(&Params::parse(Some("seconds=5"))),
            Ok(None)
        ));
    }

    #[test]
    fn bad_values_name_the_parameter_and_what_is_allowed() {
        assert!(err("since=0").contains("\"since\": \"0\"; allowed: an integer from 1 to"));
        assert!(err("since=abc").contains("\"since\""));
        assert!(err("since=30&start=-60").contains("not both"));
        assert!(err("since=30&seconds=5").contains("\"seconds\""));
        assert!(err("since=30&frequency=99").contains("\"frequency\""));
        assert!(err("start=yesterday").contains("\"start\": \"yesterday\"; allowed: a Unix time"));
        assert!(err("start=0").contains("\"start\""));
        assert!(err("end=99999999999").contains("\"end\""));
        assert!(err("start=-60&end=-120").contains("\"end\": \"-120\"; allowed: a time later"));
    }

    #[test]
    fn negative_times_count_back_from_now() {
        let Ok(Some(s)) = stretch(&Params::parse(Some("start=-600&end=-300"))) else {
            panic!("refused");
        };
        let ago = |t: SystemTime| SystemTime::now().duration_since(t).unwrap_or_default();
        assert!((599..=601).contains(&ago(s.from).as_secs()));
        assert!((299..=301).contains(&ago(s.to.unwrap_or(UNIX_EPOCH)).as_secs()));
    }
}
