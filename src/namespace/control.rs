//! `.control`: commands written as lines (`delete NAME`, `concat NEW SRC...`), each run as its
//! line completes, and the log of every command and its outcome (the last 100, as JSON lines),
//! which is what reading `.control` returns.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use super::{FsError, FsResult, Handle, Namespace};
use crate::names::DatasetName;

const CONTROL_HISTORY: usize = 100;

/// One command and its outcome, as `.control` shows it.
#[derive(serde::Serialize)]
struct ControlRecord {
    time: u64,
    command: String,
    ok: bool,
    message: String,
}

/// The commands run and their outcomes, newest last.
#[derive(Default)]
pub(super) struct ControlLog {
    lines: Mutex<VecDeque<String>>,
}

impl ControlLog {
    /// What reading `.control` returns.
    pub fn text(&self) -> String {
        self.lines
            .lock()
            .expect("control log")
            .iter()
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// A handle on `.control`: pending bytes of a line for a writer, the log as it is for a
    /// reader.
    pub fn open(&self, write: bool) -> Handle {
        if write {
            Handle::Control(Vec::new())
        } else {
            Handle::Snapshot(self.text().into_bytes().into())
        }
    }

    /// Records `command` with its outcome: a message, or the reason it failed.
    pub fn record(&self, command: &str, outcome: Result<String, String>) {
        let rec = ControlRecord {
            time: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            command: command.to_string(),
            ok: outcome.is_ok(),
            message: outcome.unwrap_or_else(|e| e),
        };
        let mut log = self.lines.lock().expect("control log");
        log.push_back(serde_json::to_string(&rec).expect("serialisable"));
        while log.len() > CONTROL_HISTORY {
            log.pop_front();
        }
    }
}

/// Appends `data` to the bytes `pending` of an unfinished line; returns the lines it completes,
/// without their newline.
pub(super) fn complete_lines(pending: &mut Vec<u8>, data: &[u8]) -> Vec<Vec<u8>> {
    pending.extend_from_slice(data);
    let mut lines = Vec::new();
    while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
        let mut line: Vec<u8> = pending.drain(..=pos).collect();
        line.pop();
        lines.push(line);
    }
    lines
}

/// How `.control` shows a refusal.
fn message(e: &FsError) -> String {
    match e {
        FsError::Invalid(m) | FsError::Io(m) => m.clone(),
        e => format!("{e:?}"),
    }
}

/// `Refused` reasons of the catalogue, prefixed with the command they refuse.
fn refused_by(command: &str) -> impl Fn(crate::catalog::CatalogError) -> FsError + '_ {
    move |e| match e {
        crate::catalog::CatalogError::Refused(m) => FsError::Invalid(format!("{command}: {m}")),
        e => e.into(),
    }
}

impl Namespace {
    /// Runs one line written to `.control` and records it (blank lines are skipped).
    pub(super) fn run_command_bytes(&self, line: &[u8]) -> FsResult<()> {
        let text = String::from_utf8_lossy(line).trim().to_string();
        if text.is_empty() {
            return Ok(());
        }
        let result = match std::str::from_utf8(line) {
            Ok(_) => self.run_command(&text),
            Err(_) => Err(FsError::Invalid("command is not UTF-8".into())),
        };
        self.control
            .record(&text, result.clone().map_err(|e| message(&e)));
        result.map(|_| ())
    }

    /// Runs one `.control` command. Every refusal is `Invalid(reason)` (EINVAL to the writer).
    pub fn run_command(&self, line: &str) -> FsResult<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let invalid = |m: &str| Err(FsError::Invalid(m.into()));
        match words.as_slice() {
            ["delete", name] => self.delete(name),
            ["delete", ..] => invalid("usage: delete NAME"),
            ["concat", new, sources @ ..] => self
                .catalog
                .start_concat(new, sources, line)
                .map_err(refused_by("concat")),
            ["concat"] => invalid("usage: concat NEW SRC..."),
            [cmd, ..] => Err(FsError::Invalid(format!(
                "unknown command '{cmd}' (commands: delete NAME, concat NEW SRC...)"
            ))),
            [] => invalid("empty command"),
        }
    }

    /// `delete NAME`: the dataset leaves the store, and its names the kernel's cache.
    fn delete(&self, name: &str) -> FsResult<String> {
        let name = DatasetName::parse(name).map_err(|e| FsError::Invalid(e.to_string()))?;
        self.catalog.delete(&name).map_err(refused_by("delete"))?;
        self.kernel.forget_names(&name);
        Ok(format!("deleted {name}"))
    }
}
