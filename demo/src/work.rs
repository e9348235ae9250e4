//! Endpoints that give the profiles something to show: CPU burnt in `spin_cpu`, memory
//! held by `hold_memory`, and time spent waiting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use crate::{AppState, run_blocking, spawn_named, text};

mod held;
mod query;

pub(crate) use self::held::Held;
use self::query::{BadRequest, bad, int_param};

/// The most `n` a `/work` request may ask for.
pub const MAX_ITERATIONS: u64 = 10_000_000_000;
/// The most `ms` a `/work` request may spin for.
pub const MAX_WORK_MS: u64 = 5_000;
/// The most `ms` a `/block` request may block its worker.
pub const MAX_BLOCK_MS: u64 = 10_000;
/// The most `ms` a `/sleep` request may wait.
pub const MAX_SLEEP_MS: u64 = 60_000;
/// The most memory one `/hold` request may ask for, and the highest cap on all it keeps,
/// in MiB. The cap itself is lower under a cgroup memory limit (a quarter of it) or when
/// `--max-held-mb` says so.
pub const MAX_HELD_MB: usize = 1024;
/// The most blocks one `/churn` request may allocate.
pub const MAX_CHURN_BLOCKS: u64 = 1_000_000;
/// The largest block `/churn` allocates, in bytes.
pub const MAX_CHURN_BYTES: u64 = 1 << 20;

const MIB: usize = 1 << 20;

/// Runs `n` iterations of the same loop as `burn` in the Go peer, so both do identical
/// work per request. Never inlined, so it shows in every profile under its own name.
#[inline(never)]
pub fn spin_cpu(n: u64) -> u64 {
    let n = std::hint::black_box(n);
    let mut x: u64 = 0;
    for i in 0..n {
        x = x.wrapping_mul(31).wrapping_add(i ^ (x >> 3));
    }
    x
}

/// Spins in [`spin_cpu`] for about `duration`.
#[inline(never)]
pub fn spin_for(duration: Duration) -> u64 {
    let start = Instant::now();
    let mut x = 0;
    while start.elapsed() < duration {
        x ^= spin_cpu(50_000);
    }
    x
}

/// Allocates `mb` MiB in 1 MiB blocks and touches every page, so the memory is resident and
/// heap profiles attribute it here. Never inlined, and never a tail call: a release build
/// otherwise jumps straight into `collect` and this frame vanishes from the stacks.
#[inline(never)]
pub fn hold_memory(mb: usize) -> Vec<Box<[u8]>> {
    let held = (0..mb)
        .map(|i| vec![(i % 251) as u8 + 1; MIB].into_boxed_slice())
        .collect();
    std::hint::black_box(held)
}

/// Allocates `n` blocks of `bytes` bytes one after another, writing one byte of each and
/// freeing it at once: allocation churn with nothing held. Never inlined, so allocation
/// profiles (`/debug/pprof/allocs`) show it under its own name.
#[inline(never)]
pub fn churn_memory(n: u64, bytes: usize) -> u64 {
    let mut sum = 0u64;
    for i in 0..n {
        let mut block = std::hint::black_box(Vec::<u8>::with_capacity(bytes));
        block.push(i as u8);
        sum = sum.wrapping_add(u64::from(block[0]));
    }
    sum
}

/// `GET /work?n=ITER` runs `spin_cpu(ITER)`; `GET /work?ms=N` spins for about N ms.
pub(crate) async fn work(Query(q): Query<HashMap<String, String>>) -> Result<Response, BadRequest> {
    let n = int_param(&q, "n", MAX_ITERATIONS)?;
    let ms = int_param(&q, "ms", MAX_WORK_MS)?;
    let job = match (n, ms) {
        (Some(n), None) => run_blocking("demo::work", move || spin_cpu(n)).await,
        (None, Some(ms)) => {
            run_blocking("demo::work", move || spin_for(Duration::from_millis(ms))).await
        }
        _ => {
            return Err(BadRequest(format!(
                "exactly one of \"n\" (an integer from 1 to {MAX_ITERATIONS}: fixed work) \
                     or \"ms\" (an integer from 1 to {MAX_WORK_MS}: about that long) is required\n"
            )));
        }
    };
    tracing::debug!(?n, ?ms, "spinning");
    Ok(match job {
        Ok(x) => text(StatusCode::OK, format!("{x}\n")),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("work failed: {e}\n"),
        ),
    })
}

/// `GET /hash?n=ITER` hashes ITER rounds in [`hash_bytes`]; `GET /hash?ms=N` for about
/// N ms: a second CPU-heavy route, so that profiles split by `http.route` show two.
pub(crate) async fn hash(Query(q): Query<HashMap<String, String>>) -> Result<Response, BadRequest> {
    let n = int_param(&q, "n", MAX_ITERATIONS)?;
    let ms = int_param(&q, "ms", MAX_WORK_MS)?;
    let job = match (n, ms) {
        (Some(n), None) => run_blocking("demo::hash", move || hash_bytes(n)).await,
        (None, Some(ms)) => {
            run_blocking("demo::hash", move || {
                let start = Instant::now();
                let mut x = 0;
                while start.elapsed() < Duration::from_millis(ms) {
                    x ^= hash_bytes(50_000);
                }
                x
            })
            .await
        }
        _ => {
            return Err(BadRequest(format!(
                "exactly one of \"n\" (an integer from 1 to {MAX_ITERATIONS}: fixed work) \
                     or \"ms\" (an integer from 1 to {MAX_WORK_MS}: about that long) is required\n"
            )));
        }
    };
    Ok(match job {
        Ok(x) => text(StatusCode::OK, format!("{x:016x}\n")),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("hash failed: {e}\n"),
        ),
    })
}

/// FNV-1a over `n` rounds of an 8-byte counter: CPU work under its own name. Never
/// inlined, so it shows in profiles apart from [`spin_cpu`].
#[inline(never)]
pub fn hash_bytes(n: u64) -> u64 {
    let n = std::hint::black_box(n);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..n {
        for b in i.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `GET /churn?n=N&bytes=B` allocates and frees `N` blocks of `B` bytes (default 1024).
pub(crate) async fn churn(
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, BadRequest> {
    let n = int_param(&q, "n", MAX_CHURN_BLOCKS)?
        .ok_or_else(|| bad("n", "", &format!("an integer from 1 to {MAX_CHURN_BLOCKS}")))?;
    let bytes = int_param(&q, "bytes", MAX_CHURN_BYTES)?.unwrap_or(1024) as usize;
    match run_blocking("demo::churn", move || churn_memory(n, bytes)).await {
        Ok(sum) => Ok(text(StatusCode::OK, format!("{sum}\n"))),
        Err(e) => Ok(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("churn failed: {e}\n"),
        )),
    }
}

/// `POST /hold?mb=N` allocates N MiB more and keeps it, within the cap on all it keeps.
pub(crate) async fn hold(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, BadRequest> {
    let mb = int_param(&q, "mb", MAX_HELD_MB as u64)?
        .ok_or_else(|| bad("mb", "", &format!("an integer from 1 to {MAX_HELD_MB}")))?
        as usize;
    let held = &state.inner.held;
    let cap = held.cap_mb;
    // Reserve first: a request that passes this has its MiB counted against the cap
    // before a byte is allocated.
    if let Err(reserved) = held.reserve(mb) {
        return Err(bad(
            "mb",
            &mb.to_string(),
            &format!(
                "at most {cap} MiB held in all ({}); {reserved} MiB are held or being \
                 allocated, so at most {} more",
                held.cap_why,
                cap.saturating_sub(reserved)
            ),
        ));
    }
    // The blocks are stored by the blocking task itself, so a client that goes away
    // mid-allocation cannot leave its reservation behind without the memory it stands for.
    let keeper = state.clone();
    let stored = run_blocking("demo::hold", move || {
        let blocks = hold_memory(mb);
        let mut all = keeper.inner.held.lock();
        all.extend(blocks);
        keeper.metrics().set_held(all.len());
        all.len()
    })
    .await;
    let Ok(total) = stored else {
        held.unreserve(mb);
        return Ok(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "allocation failed\n".to_owned(),
        ));
    };
    tracing::info!(mb, total_mb = total, "holding memory");
    Ok(text(
        StatusCode::OK,
        format!("held {mb} MiB, {total} MiB in all\n"),
    ))
}

/// `DELETE /hold` frees everything `/hold` keeps.
pub(crate) async fn release(State(state): State<AppState>) -> Response {
    let held = &state.inner.held;
    let freed = std::mem::take(&mut *held.lock());
    let mb = freed.len();
    drop(freed);
    // Reservations of requests still allocating stay.
    held.unreserve(mb);
    state.metrics().set_held(held.lock().len());
    tracing::info!(mb, "released memory");
    text(StatusCode::OK, format!("freed {mb} MiB\n"))
}

/// `GET /block?ms=N` blocks the async worker thread that runs it for N ms, as a bug
/// would (a synchronous sleep, lock or I/O inside a handler): what task dumps and the
/// runtime's health have to cope with.
pub(crate) async fn block(
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, BadRequest> {
    let ms = int_param(&q, "ms", MAX_BLOCK_MS)?
        .ok_or_else(|| bad("ms", "", &format!("an integer from 1 to {MAX_BLOCK_MS}")))?;
    block_worker(Duration::from_millis(ms));
    Ok(text(
        StatusCode::OK,
        format!("blocked a worker for {ms} ms\n"),
    ))
}

/// Waits without holding a thread; a function of its own so that task dumps name it.
pub async fn nap(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Blocks the calling thread. Never inlined, so profiles and dumps name it.
#[inline(never)]
pub fn block_worker(d: Duration) {
    std::thread::sleep(d);
    // Not a tail call, so the blocked worker's stack keeps this frame in release builds.
    std::hint::black_box(());
}

/// `GET /sleep?ms=N` waits N ms without holding a thread.
pub(crate) async fn sleep(
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, BadRequest> {
    let ms = int_param(&q, "ms", MAX_SLEEP_MS)?
        .ok_or_else(|| bad("ms", "", &format!("an integer from 1 to {MAX_SLEEP_MS}")))?;
    // A task of its own, so that tokio-console lists each request waiting here by name.
    let slept = spawn_named("demo::sleep", nap(Duration::from_millis(ms))).await;
    Ok(match slept {
        Ok(()) => text(StatusCode::OK, format!("slept {ms} ms\n")),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("sleep failed: {e}\n"),
        ),
    })
}

/// `GET /slow?ms=N&block_ms=M`: a request that waits the way real services do: it awaits
/// a slow dependency the demo simulates for N ms, then makes a blocking call of M ms
/// inside `spawn_blocking` (either may be left out). What a wall-time profile shows and a
/// CPU profile does not.
pub(crate) async fn slow(Query(q): Query<HashMap<String, String>>) -> Result<Response, BadRequest> {
    let ms = int_param(&q, "ms", MAX_SLEEP_MS)?;
    let block_ms = int_param(&q, "block_ms", MAX_BLOCK_MS)?;
    if ms.is_none() && block_ms.is_none() {
        return Err(bad(
            "ms",
            "",
            &format!("an integer from 1 to {MAX_SLEEP_MS} (and/or block_ms)"),
        ));
    }
    if let Some(ms) = ms {
        call_slow_dependency(Duration::from_millis(ms)).await;
    }
    if let Some(block_ms) = block_ms {
        let blocked = run_blocking("demo::blocking_lookup", move || {
            blocking_lookup(Duration::from_millis(block_ms))
        })
        .await;
        if let Err(e) = blocked {
            return Ok(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("blocking lookup failed: {e}\n"),
            ));
        }
    }
    Ok(text(
        StatusCode::OK,
        format!(
            "waited {} ms on the dependency, blocked {} ms\n",
            ms.unwrap_or(0),
            block_ms.unwrap_or(0)
        ),
    ))
}

/// A call to a slow downstream service, simulated: it awaits a timer for `d`, holding no
/// thread. A function of its own so that profiles name it.
#[inline(never)]
pub async fn call_slow_dependency(d: Duration) {
    tokio::time::sleep(d).await;
}

/// A blocking call (a synchronous client, a file lock, a DNS lookup), simulated: it
/// blocks the calling thread for `d`. Never inlined, so profiles name it.
#[inline(never)]
pub fn blocking_lookup(d: Duration) {
    std::thread::sleep(d);
    // Not a tail call: a release build would otherwise jump to `sleep` and leave no
    // frame of this function on the blocked thread's stack. And not the same code as
    // `block_worker`, which the compiler would then fold into one function and one name.
    std::hint::black_box(d.as_nanos() ^ 0x10_0c_0a_0b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_touches_every_block() {
        // Block i holds i as u8: the sum of 0..300 mod 256.
        let want: u64 = (0..300u64).map(|i| i % 256).sum();
        assert_eq!(churn_memory(300, 16), want);
    }

    #[test]
    fn spin_cpu_matches_the_go_peer() {
        // burn(10) and burn(1000000) as ../shared/peers/go-counter computes them (printed
        // by Go 1.19): both services do identical work per request.
        assert_eq!(spin_cpu(10), 936_558_420_568);
        assert_eq!(spin_cpu(1_000_000), 13_978_468_970_185_643_382);
    }

    #[test]
    fn held_memory_is_touched() {
        let blocks = hold_memory(2);
        assert_eq!(blocks.len(), 2);
        assert!(blocks.iter().all(|b| b.len() == MIB && b[MIB - 1] != 0));
    }
}
