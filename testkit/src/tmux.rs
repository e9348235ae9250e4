//! A terminal program in a detached tmux session, for tests that read its screen.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A terminal program running in a detached tmux session of its own, for tests that read
/// what it shows. The session is killed when this is dropped.
#[derive(Debug)]
pub struct Tmux {
    session: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a `width` x `height` terminal.
    pub fn start(command: &str, width: u16, height: u16) -> Tmux {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = format!("diag-test-{}-{seq}", std::process::id());
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .status()
            .expect("run tmux (scripts/test.sh installs it; or apt-get install tmux)");
        assert!(status.success(), "tmux new-session failed: {status}");
        Tmux { session }
    }

    /// What the terminal shows now, as text.
    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `keys` (tmux key names, e.g. `q` or `Enter`).
    pub fn send_keys(&self, keys: &str) {
        let _ = Command::new("tmux")
            .args(["send-keys", "-t", &self.session, keys])
            .status();
    }

    /// Waits until the screen satisfies `ok`, up to `timeout`; returns the last screen.
    pub fn wait_for(&self, timeout: Duration, ok: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                return Err(screen);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // The program may have quit already, taking its session with it.
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .stderr(Stdio::null())
            .status();
    }
}
