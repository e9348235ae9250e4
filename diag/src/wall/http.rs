//! `GET /wall`: the sampler's window as profile.proto, folded stacks or an SVG.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

use super::sampler::{self, DEFAULT_HZ, FULL_RATE_TASKS, MAX_HZ, Options, WallProfile};
use crate::error::ApiError;
use crate::flamegraph;
use crate::params::Params;
use crate::proto::{self, ProfileBuilder};
use crate::state::Diag;
use crate::symbols::Resolved;
use crate::tasks::DumpGuard;
use crate::util::{unix_nanos, utc};

/// A wall-time profile's length unless `seconds` says otherwise (Go's CPU default).
pub(crate) const DEFAULT_SECONDS: u64 = 30;

/// `GET /wall?seconds=N&hz=HZ&format=proto|svg|folded&threads=1|0` (`threads=0`: the
/// traced tasks alone, no signal sent to any thread).
pub(crate) async fn wall(State(d): State<Diag>, RawQuery(q): RawQuery) -> Response {
    match run(&d, &Params::parse(q.as_deref())).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Sets the sampler's stop flag when the request goes away (or ends).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn run(d: &Diag, params: &Params) -> Result<Response, ApiError> {
    let seconds = d.seconds(params, DEFAULT_SECONDS)?;
    let hz = params.int_in("hz", DEFAULT_HZ, 1, MAX_HZ)?;
    let format = params.choice("format", "proto", &["proto", "svg", "folded"])?;
    let threads = params.choice("threads", "1", &["1", "0"])? == "1";
    crate::tasks::available().map_err(|e| {
        ApiError::NotImplemented(format!(
            "no wall-time profile: it samples the traced task dumps, and {e}"
        ))
    })?;
    let until = SystemTime::now() + Duration::from_secs(seconds);
    let guard = DumpGuard::take(format!("a wall-time profile until {}", utc(until)))?;
    let _permit = d.heavy()?;
    let opts = Options {
        window: Duration::from_secs(seconds),
        hz,
        except: crate::tasks::traced::current(),
        threads,
        shutdown: d.cfg().shutdown.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: it sleeps between ticks and waits for the reports on a
    // condition variable, so no runtime's timer or worker is held by the profile, and the
    // dump guard lives exactly as long as the sampling.
    std::thread::Builder::new()
        .name("diag-wall".to_owned())
        .spawn(move || {
            let capture = sampler::run(&opts, &stop);
            drop(guard);
            let _ = tx.send(capture);
        })
        .map_err(|e| ApiError::Internal(format!("could not start the wall sampler: {e}")))?;
    let capture = rx
        .await
        .map_err(|_| ApiError::Internal("the wall sampler failed (see the logs)".to_owned()))?;
    let (body, profile) = tokio::task::spawn_blocking(move || {
        let profile = sampler::symbolize(capture);
        let body = match format {
            "proto" => to_proto(&profile),
            "svg" => to_svg(&profile),
            _ => Ok(to_folded(&profile).join("\n").into_bytes()),
        };
        body.map(|b| (b, profile))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("building the wall-time profile failed: {e}")))?
    .map_err(|e| ApiError::Internal(format!("encoding the wall-time profile failed: {e}")))?;
    let ctype = match format {
        "proto" => "application/octet-stream",
        "svg" => "image/svg+xml",
        _ => "text/plain; charset=utf-8",
    };
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if format == "proto" {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"wall\""),
        );
    }
    let s = &profile.stats;
    h.insert("x-diag-samples", s.ticks.into());
    h.insert("x-diag-tasks-max", s.most_tasks.into());
    if let Ok(v) = HeaderValue::from_str(&format!("{:.1}", achieved_hz(&profile))) {
        h.insert("x-diag-sample-rate", v);
    }
    if s.lowered_ticks > 0 {
        if let Ok(v) = HeaderValue::from_str(&lowered(&profile)) {
            h.insert("x-diag-rate-lowered", v);
        }
    }
    if s.ended_early {
        h.insert("x-diag-ended-early", HeaderValue::from_static("shutdown"));
    }
    Ok(res)
}

fn achieved_hz(p: &WallProfile) -> f64 {
    let secs = p.stats.duration.as_secs_f64();
    if secs > 0.0 {
        p.stats.ticks as f64 / secs
    } else {
        0.0
    }
}

/// Why and how far the rate was lowered.
fn lowered(p: &WallProfile) -> String {
    let s = &p.stats;
    format!(
        "{} of {} samples at a lowered rate (down to {:.1} Hz): up to {} traced tasks, above \
         the {} sampled at the full {} Hz",
        s.lowered_ticks, s.ticks, s.lowest_hz, s.most_tasks, FULL_RATE_TASKS, s.hz
    )
}

fn subtitle(p: &WallProfile) -> String {
    let s = &p.stats;
    let mut out = format!(
        "{:.1} s at {} Hz from {}: {} samples ({:.1} Hz achieved) of up to {} traced tasks; \
         sampling took {:.1} ms in all (slowest sample {:.1} ms)",
        s.duration.as_secs_f64(),
        s.hz,
        s.started.map_or_else(String::new, utc),
        s.ticks,
        achieved_hz(p),
        s.most_tasks,
        s.sampling.as_secs_f64() * 1e3,
        s.slowest_tick.as_secs_f64() * 1e3,
    );
    if s.lowered_ticks > 0 {
        out.push_str("; ");
        out.push_str(&lowered(p));
    }
    if s.untraced > 0 {
        out.push_str(&format!(
            "; {} futures ran untraced since the start (registry full)",
            s.untraced
        ));
    }
    let t = &s.threads;
    match &t.unavailable {
        Some(_) if !s.threads_asked => out.push_str("; threads not sampled (threads=0)"),
        Some(why) => out.push_str(&format!("; threads not sampled: {why}")),
        None => out.push_str(&format!(
            "; threads: {} signals (real-time signal {}), {} samples, {} left out as tokio \
             waiting for work ({:.1} s), {} missed, {} not kept (stack not known yet), \
             {} over the {}-thread limit, {} not signalled (they block it); sampling them took \
             {:.1} ms in all",
            t.signals_sent,
            t.signal,
            t.samples,
            s.idle_thread_samples,
            s.idle_thread_nanos as f64 / 1e9,
            t.missed,
            t.ip_only,
            t.over_limit,
            super::sampler::MAX_THREADS_SAMPLED,
            t.blocking_signal,
            t.busy.as_secs_f64() * 1e3,
        )),
    }
    if t.paused_ticks > 0 {
        out.push_str(&format!(
            "; {} samples without threads (a CPU profile was running)",
            t.paused_ticks
        ));
    }
    if t.foreign > 0 {
        out.push_str(&format!(
            "; {} signals on that signal were not diag's",
            t.foreign
        ));
    }
    if s.ended_early {
        out.push_str("; ended early by shutdown");
    }
    out
}

/// The label sets of the stacks' ids.
#[cfg(feature = "cpu")]
fn label_sets(p: &WallProfile) -> HashMap<u32, Arc<crate::labels::LabelSet>> {
    crate::labels::resolve(p.stacks.iter().map(|s| s.label))
}

/// gzipped profile.proto: `samples/count` and `wall/nanoseconds`, a `task` label with the
/// traced future's name (a `thread` label with the thread's name for a thread's stack),
/// and the labels (`diag::labels`) the task or thread ran under, the main binary's mapping first.
fn to_proto(p: &WallProfile) -> std::io::Result<Vec<u8>> {
    let period = i64::from(1_000_000_000 / p.stats.hz.max(1));
    let mut b = ProfileBuilder::new(
        &[("samples", "count"), ("wall", "nanoseconds")],
        ("wall", "nanoseconds"),
        period,
        crate::maps::current(),
    );
    let start = p.stats.started.unwrap_or(SystemTime::UNIX_EPOCH);
    b.time(unix_nanos(start), p.stats.duration.as_nanos() as i64);
    b.comment(&format!("diag wall-time profile: {}", subtitle(p)));
    b.default_sample_type("wall");
    #[cfg(feature = "cpu")]
    let sets = label_sets(p);
    for s in &p.stacks {
        if s.frames.is_empty() {
            continue;
        }
        let locations = s
            .frames
            .iter()
            .map(|f| b.location(f.ip, &f.lines))
            .collect();
        #[cfg_attr(not(feature = "cpu"), allow(unused_mut))]
        let mut labels: Vec<(&str, &str)> =
            vec![(if s.thread { "thread" } else { "task" }, &s.task)];
        #[cfg(feature = "cpu")]
        if let Some(set) = sets.get(&s.label) {
            labels.extend(set.iter().filter(|(k, _)| *k != "thread" && *k != "task"));
        }
        b.sample(locations, vec![s.weight.count, s.weight.nanos], &labels);
    }
    proto::gzip(&b.encode())
}

/// Collapsed stacks, root first, the task's name as the root frame (`thread NAME` for a
/// thread's stack), values in ns.
fn to_folded(p: &WallProfile) -> Vec<String> {
    let roots: Vec<String> = p
        .stacks
        .iter()
        .map(|s| {
            if s.thread {
                format!("thread {}", s.task)
            } else {
                s.task.to_string()
            }
        })
        .collect();
    let mut symbols: HashMap<usize, Resolved> = HashMap::new();
    let ips: Vec<Vec<usize>> = p
        .stacks
        .iter()
        .map(|s| {
            s.frames
                .iter()
                .map(|f| {
                    symbols
                        .entry(f.ip as usize)
                        .or_insert_with(|| f.lines.clone());
                    f.ip as usize
                })
                .collect()
        })
        .collect();
    flamegraph::fold(
        p.stacks
            .iter()
            .zip(&ips)
            .zip(&roots)
            .filter(|((s, _), _)| !s.frames.is_empty())
            .map(|((s, ips), root)| (root.as_str(), &ips[..], s.weight.nanos)),
        &symbols,
    )
}

fn to_svg(p: &WallProfile) -> std::io::Result<Vec<u8>> {
    flamegraph::render(
        &to_folded(p),
        &flamegraph::Labels {
            title: "Wall-time flamegraph (traced tokio tasks and threads)",
            subtitle: &subtitle(p),
            count_name: "ns",
        },
    )
}
