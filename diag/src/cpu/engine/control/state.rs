//! The state the `diag-sampler` thread owns, and the jobs it runs on it: joining and
//! leaving readers, the recorder, and each tick's drain and scan.

use std::time::{Duration, Instant, SystemTime};

use super::session::{Reader, Session, release_free_memory};
use super::{RECORDER_STATUS, SLACK, STATUS};
use crate::cpu::engine::recorder::Recorder;
use crate::cpu::engine::signal::{self, Counters};
use crate::cpu::engine::stacks::FastMap;
use crate::cpu::engine::{EngineError, Mark, Recorded, RecorderSettings, Refusal, Window};

/// What the `diag-sampler` thread owns: the session while anything samples.
#[derive(Default)]
pub(super) struct Engine {
    pub(super) session: Option<Session>,
    /// The ring's read position.
    pub(super) tail: usize,
    pub(super) next_reader: u64,
}

impl Engine {
    pub(super) fn publish_status(&self) {
        let status = self.session.as_ref().and_then(|s| {
            let top = s.readers.values().map(|r| r.frequency).max()?;
            Some((top, s.readers.len(), s.until))
        });
        *STATUS.lock().unwrap_or_else(|e| e.into_inner()) = status;
        let rec = self
            .session
            .as_ref()
            .and_then(|s| s.recorder.as_ref().map(|r| r.status(&s.stacks)));
        *RECORDER_STATUS.lock().unwrap_or_else(|e| e.into_inner()) = rec;
    }

    /// How long the loop may wait for a job before draining or rescanning: `None` when
    /// nothing samples.
    pub(super) fn tick_every(&self) -> Option<Duration> {
        let s = self.session.as_ref()?;
        let (drain, rescan) = s.intervals();
        let next = (s.last_drain + drain).min(s.last_scan + rescan);
        Some(next.saturating_duration_since(Instant::now()))
    }

    /// Starts a session at `frequency` unless one runs.
    pub(super) fn ensure_session(
        &mut self,
        frequency: u32,
        until: SystemTime,
    ) -> Result<(), EngineError> {
        if self.session.is_none() {
            self.session = Some(Session::start(frequency, until, &mut self.tail)?);
        }
        Ok(())
    }

    pub(super) fn join(&mut self, frequency: u32, window: Duration) -> Result<u64, EngineError> {
        let until = SystemTime::now() + window;
        self.ensure_session(frequency, until)?;
        // Samples taken before this reader joined are not its own.
        self.tick();
        let id = self.next_reader;
        self.next_reader += 1;
        if let Some(s) = &mut self.session {
            s.until = s.until.max(until);
            s.readers.insert(
                id,
                Reader {
                    frequency,
                    peak_frequency: frequency,
                    counts: FastMap::default(),
                    start: Mark::now(),
                    counters: Counters::now(),
                    stacks_full: s.stacks_full,
                    threads_unsampled: s.unsampled.len() as u64,
                },
            );
            s.retune();
        }
        Ok(id)
    }

    pub(super) fn finish(&mut self, id: u64) -> Result<Window, EngineError> {
        self.tick();
        let Some(s) = &mut self.session else {
            return Err(EngineError::Lost);
        };
        let reader = s.readers.remove(&id).ok_or(EngineError::Lost)?;
        let end = Mark::now();
        let window = s.window(reader, end);
        self.end_if_idle();
        Ok(window)
    }

    /// Stops the session when no reader and no recorder is left; else sets the rate to
    /// what those left ask.
    pub(super) fn end_if_idle(&mut self) {
        let idle = self
            .session
            .as_ref()
            .is_some_and(|s| s.readers.is_empty() && s.recorder.is_none());
        if idle {
            if let Some(s) = self.session.take() {
                s.stop(&mut self.tail);
            }
            release_free_memory();
        } else if let Some(s) = &mut self.session {
            s.retune();
        }
    }

    pub(super) fn start_recorder(
        &mut self,
        settings: RecorderSettings,
        stop_when: Box<dyn Fn() -> bool + Send>,
    ) -> Result<(), EngineError> {
        self.ensure_session(settings.frequency, SystemTime::now())?;
        self.tick();
        if let Some(s) = &mut self.session {
            if let Some(old) = s.recorder.take() {
                old.release_all(&mut s.stacks);
            }
            s.recorder = Some(Recorder::new(settings, stop_when));
            s.retune();
        }
        Ok(())
    }

    pub(super) fn recorded(
        &mut self,
        from: SystemTime,
        to: Option<SystemTime>,
    ) -> Result<Recorded, Refusal> {
        self.tick();
        let Some(s) = &mut self.session else {
            return Err(Refusal::Off);
        };
        let Some(r) = &mut s.recorder else {
            return Err(Refusal::Off);
        };
        let to = to.unwrap_or_else(SystemTime::now);
        let names = &s.name_list;
        let name = |id: u32| {
            names
                .get(id as usize)
                .map_or_else(|| "(unknown)".to_owned(), |n| n.to_string())
        };
        r.window(from, to, &s.stacks, &name)
    }

    /// Drains the ring into the readers' windows and the recorder; lists threads when due.
    pub(super) fn tick(&mut self) {
        let Some(s) = &mut self.session else {
            return;
        };
        if let Some(ring) = signal::ring() {
            ring.drain(&mut self.tail, |sample| s.add(sample));
        }
        let now = Instant::now();
        s.last_drain = now;
        s.refresh_maps(now);
        let mut stopped = false;
        if let Some(r) = &mut s.recorder {
            if (r.stop_when)() {
                if let Some(r) = s.recorder.take() {
                    r.release_all(&mut s.stacks);
                }
                stopped = true;
            } else {
                r.tick(&mut s.stacks, now);
            }
        }
        if stopped {
            self.end_if_idle();
            return;
        }
        let (_, rescan) = s.intervals();
        if now.duration_since(s.last_scan) + SLACK >= rescan {
            s.last_scan = now;
            s.scan();
        }
    }
}
