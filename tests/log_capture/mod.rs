//! Formatted log lines captured in memory, for tests that assert on what is logged (and,
//! above all, on what never is: secrets). Each test file uses a part of it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// The captured text; clones share it.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures every line up to `level`, as plain text, logged on the current thread (and
    /// so by the tasks of a current-thread runtime) while the guard lives.
    pub fn install(level: tracing::Level) -> (Captured, DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}
