//! The mount cache: where each blob was pushed before, per registry, so a push can ask
//! for a cross-repository mount instead of uploading. Persisted as JSON, bounded, best effort.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use crate::digest::Digest;

/// Where each blob was pushed before, per registry: the candidates for a mount.
/// Stale entries cost one failed mount request, after which the blob is uploaded.
pub(crate) struct MountCache {
    path: Option<PathBuf>,
    host: String,
    hosts: BTreeMap<String, Value>,
}

const MAX_HOSTS: usize = 16;
const MAX_REPOSITORIES_PER_BLOB: usize = 8;
const MAX_BLOBS_PER_HOST: usize = 4096;

impl MountCache {
    pub(crate) fn load(path: Option<&Path>, host: &str) -> MountCache {
        let hosts = path
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .and_then(|v| v.as_object().cloned())
            .map(|map| map.into_iter().collect())
            .unwrap_or_default();
        MountCache {
            path: path.map(Path::to_path_buf),
            host: host.to_owned(),
            hosts,
        }
    }

    pub(crate) fn candidates(&self, digest: &Digest, repository: &str) -> Vec<String> {
        if self.path.is_none() {
            return Vec::new();
        }
        self.hosts
            .get(&self.host)
            .and_then(|h| h["blobs"][digest.as_str()].as_array())
            .map(|repos| {
                repos
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|r| *r != repository)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn record(&mut self, digest: &Digest, repository: &str) {
        if self.path.is_none() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let entry = self
            .hosts
            .entry(self.host.clone())
            .or_insert_with(|| json!({"blobs": {}}));
        entry["used"] = json!(now);
        let Some(blobs) = entry["blobs"].as_object_mut() else {
            return;
        };
        let repos = blobs.entry(digest.to_string()).or_insert_with(|| json!([]));
        let mut list: Vec<Value> = repos.as_array().cloned().unwrap_or_default();
        list.retain(|r| r.as_str() != Some(repository));
        list.insert(0, json!(repository));
        list.truncate(MAX_REPOSITORIES_PER_BLOB);
        *repos = Value::Array(list);
        if blobs.len() > MAX_BLOBS_PER_HOST {
            let extra: Vec<String> = blobs
                .keys()
                .take(blobs.len() - MAX_BLOBS_PER_HOST)
                .cloned()
                .collect();
            for key in extra {
                blobs.remove(&key);
            }
        }
    }

    /// Best effort: a lost cache only costs mounts.
    pub(crate) fn save(&mut self) {
        let Some(path) = &self.path else {
            return;
        };
        while self.hosts.len() > MAX_HOSTS {
            let oldest = self
                .hosts
                .iter()
                .min_by_key(|(_, v)| v["used"].as_u64().unwrap_or(0))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(key) => self.hosts.remove(&key),
                None => break,
            };
        }
        let temp = path.with_extension(format!("tmp-{}", std::process::id()));
        let json = Value::Object(self.hosts.clone().into_iter().collect());
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&temp, json.to_string()))
            .and_then(|()| std::fs::rename(&temp, path));
        if let Err(err) = written {
            eprintln!("warning: could not write `{}`: {err}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_cache_remembers_repositories_per_registry() {
        let dir = std::env::temp_dir().join(format!("xtask-mount-cache-{}", std::process::id()));
        let path = dir.join("cache.json");
        let _ = std::fs::remove_dir_all(&dir);
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let mut cache = MountCache::load(Some(&path), "127.0.0.1:5000");
        cache.record(&a, "ns/backend");
        cache.record(&a, "ns/frontend");
        cache.save();
        let cache = MountCache::load(Some(&path), "127.0.0.1:5000");
        assert_eq!(cache.candidates(&a, "ns/frontend"), ["ns/backend"]);
        assert_eq!(
            cache.candidates(&a, "other/x"),
            ["ns/frontend", "ns/backend"]
        );
        assert!(cache.candidates(&b, "other/x").is_empty());
        let elsewhere = MountCache::load(Some(&path), "127.0.0.1:5001");
        assert!(elsewhere.candidates(&a, "other/x").is_empty());
        let disabled = MountCache::load(None, "127.0.0.1:5000");
        assert!(disabled.candidates(&a, "other/x").is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
