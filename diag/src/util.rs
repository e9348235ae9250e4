//! Small helpers with no better home.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::ToSocketAddrs;

/// `2026-11-22 06:30:00 UTC`, without a date crate.
pub(crate) fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Nanoseconds since the Unix epoch, for profile.proto's `time_nanos`.
pub(crate) fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Binds the first address `addr` resolves to that can be bound (as
/// `tokio::net::TcpListener::bind` does), as a non-blocking std listener that any runtime
/// can adopt, with the address it listens on. On failure, the last address tried (`None`
/// when `addr` resolved to nothing) and why.
pub(crate) async fn bind(
    addr: impl ToSocketAddrs,
) -> Result<(std::net::TcpListener, SocketAddr), (Option<SocketAddr>, io::Error)> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await.map_err(|e| (None, e))? {
        let bound = std::net::TcpListener::bind(a).and_then(|l| {
            l.set_nonblocking(true)?;
            let local = l.local_addr()?;
            Ok((l, local))
        });
        match bound {
            Ok(bound) => return Ok(bound),
            Err(e) => last = Some((Some(a), e)),
        }
    }
    Err(last.unwrap_or_else(|| {
        let e = io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        );
        (None, e)
    }))
}

/// Spawns `future` as a task named `name` (tokio-console shows the name; names need
/// `--cfg tokio_unstable` and tokio's `tracing` feature, which the `console` feature
/// turns on; without them this is a plain `tokio::spawn`).
pub(crate) fn spawn_named<F>(name: &str, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[cfg(all(tokio_unstable, feature = "console"))]
    #[allow(clippy::expect_used)]
    {
        // tokio's builder fails only where `tokio::spawn` would panic (outside a runtime).
        tokio::task::Builder::new()
            .name(name)
            .spawn(future)
            .expect("spawning a task inside the runtime")
    }
    #[cfg(not(all(tokio_unstable, feature = "console")))]
    {
        let _ = name;
        tokio::spawn(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_305_600 + 3_723);
        assert_eq!(utc(t), "2026-11-22 01:02:03 UTC");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc(leap), "2000-02-29 00:00:00 UTC");
    }
}
