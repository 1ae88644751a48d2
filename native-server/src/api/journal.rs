//! The job journal: one small file per accepted job (`data_dir/jobs/{id}.json`: its session and
//! when it came), removed when the job finishes. Jobs and their inputs live in memory, so a
//! server that dies (a crash, SIGKILL, a power cut) loses the jobs it had accepted. On the next
//! start the journal names them, and each is reported to its client as failed with the code
//! `job_lost`: the client sends its image again instead of waiting for ever on an unknown job.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::api::sessions::{valid_id, write_atomically};

/// What the journal keeps of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub session: String,
    pub submitted_unix: u64,
}

pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens the journal and takes out the jobs a previous run left unfinished (their files are
    /// removed: from now on they are known as lost).
    pub fn open(dir: &Path) -> std::io::Result<(Self, Vec<(String, Entry)>)> {
        std::fs::create_dir_all(dir)?;
        let mut lost = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let id = name.strip_suffix(".json").filter(|id| valid_id(id));
            let parsed = id.and_then(|id| {
                let bytes = std::fs::read(&path).ok()?;
                Some((
                    id.to_string(),
                    serde_json::from_slice::<Entry>(&bytes).ok()?,
                ))
            });
            // half-written temporaries and anything else that is not an entry go too
            let _ = std::fs::remove_file(&path);
            if let Some(job) = parsed {
                lost.push(job);
            }
        }
        lost.sort_by_key(|(_, e)| e.submitted_unix);
        Ok((
            Self {
                dir: dir.to_path_buf(),
            },
            lost,
        ))
    }

    /// Records an accepted job (durably: written, synced and renamed into place).
    pub fn record(&self, id: &str, session: &str) -> std::io::Result<()> {
        let entry = Entry {
            session: session.to_string(),
            submitted_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let json = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        write_atomically(&self.dir, &format!("{id}.json"), &json)
    }

    /// Forgets a finished job.
    pub fn finish(&self, id: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_jobs_come_back_once_and_finished_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("blindsight-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (j, lost) = Journal::open(&dir).unwrap();
        assert!(lost.is_empty());
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        j.record(&a, &"1".repeat(32)).unwrap();
        j.record(&b, &"2".repeat(32)).unwrap();
        j.finish(&b);
        // what a crash mid-write leaves, and a stranger
        std::fs::write(dir.join(".cccc.json.tmp"), b"{\"sess").unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        drop(j);
        let (_, lost) = Journal::open(&dir).unwrap();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0, a);
        assert_eq!(lost[0].1.session, "1".repeat(32));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let (_, again) = Journal::open(&dir).unwrap();
        assert!(again.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
