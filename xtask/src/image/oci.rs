//! OCI config, manifest and index documents, serialised as canonical JSON.
//!
//! oci-spec keeps labels and annotations in `HashMap`s, whose iteration order changes
//! from run to run, so documents are never serialised through serde's derived order:
//! they go through [`canonical_json`], which sorts every object's keys itself.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfiguration,
    ImageConfigurationBuilder, ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder,
    MediaType, Os, RootFsBuilder,
};
use serde_json::Value;

use crate::{
    digest::Digest,
    image::{definitions::ImageDef, layer},
};

/// A JSON document with the exact bytes that were hashed: store and push these bytes.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub(crate) bytes: Vec<u8>,
    pub(crate) digest: Digest,
}

impl Blob {
    pub(crate) fn from_json(value: &Value) -> Blob {
        let bytes = canonical_json(value);
        let digest = Digest::of(&bytes);
        Blob { bytes, digest }
    }

    pub(crate) fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Serialises with sorted object keys, no insignificant whitespace, serde_json's escaping.
pub(crate) fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(&mut out, value);
    out
}

fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (idx, (key, value)) in entries.into_iter().enumerate() {
                if idx > 0 {
                    out.push(b',');
                }
                write_scalar(out, &Value::String(key.clone()));
                out.push(b':');
                write_canonical(out, value);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (idx, item) in items.iter().enumerate() {
                if idx > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        scalar => write_scalar(out, scalar),
    }
}

fn write_scalar(out: &mut Vec<u8>, value: &Value) {
    // Scalars have one serialisation in serde_json; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// Everything an image's config depends on besides its definition.
pub(crate) struct ConfigInput<'a> {
    pub(crate) def: &'a ImageDef,
    pub(crate) labels: &'a BTreeMap<String, String>,
    pub(crate) created: &'a str,
    /// Each layer's diff_id with the history line that explains it.
    pub(crate) layers: Vec<(&'a str, String)>,
}

pub(crate) fn config(input: &ConfigInput<'_>) -> anyhow::Result<ImageConfiguration> {
    let def = input.def;
    let labels: HashMap<String, String> = input
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let runtime = ConfigBuilder::default()
        .user(def.user)
        .working_dir(def.working_dir)
        .entrypoint(strings(def.entrypoint))
        .env(strings(def.env))
        .exposed_ports(vec![format!("{}/tcp", def.port)])
        .labels(labels)
        .stop_signal("SIGTERM")
        .build()
        .context("image config")?;
    let history = input
        .layers
        .iter()
        .map(|(_, created_by)| {
            HistoryBuilder::default()
                .created(input.created)
                .created_by(created_by.clone())
                .comment("cargo xtask build")
                .build()
        })
        .collect::<Result<Vec<_>, _>>()
        .context("image history")?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(
            input
                .layers
                .iter()
                .map(|(diff_id, _)| diff_id.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .context("image rootfs")?;
    let config = ImageConfigurationBuilder::default()
        .created(input.created)
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(runtime)
        .rootfs(rootfs)
        .history(history)
        .build()
        .context("image configuration")?;
    Ok(config)
}

/// Our config on top of a base image's: the base's layers and history come first, its
/// environment and labels stay unless ours set the same name, and the runtime settings
/// (user, entrypoint, ports, working directory) are ours.
pub(crate) fn on_base(mut ours: Value, base: &Value) -> Value {
    let concat = |base: &Value, ours: &Value| -> Value {
        let mut acc = base.as_array().cloned().unwrap_or_default();
        acc.extend(ours.as_array().cloned().unwrap_or_default());
        Value::Array(acc)
    };
    ours["rootfs"]["diff_ids"] = concat(&base["rootfs"]["diff_ids"], &ours["rootfs"]["diff_ids"]);
    ours["history"] = concat(&base["history"], &ours["history"]);
    let own_env: Vec<String> = ours["config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let own_names: Vec<&str> = own_env.iter().filter_map(|e| e.split('=').next()).collect();
    let mut env: Vec<Value> = base["config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e.as_str()
                .and_then(|e| e.split('=').next())
                .is_some_and(|name| !own_names.contains(&name))
        })
        .cloned()
        .collect();
    env.extend(own_env.into_iter().map(Value::String));
    ours["config"]["Env"] = Value::Array(env);
    if let Some(base_labels) = base["config"]["Labels"].as_object() {
        let mut labels = base_labels.clone();
        if let Some(own) = ours["config"]["Labels"].as_object() {
            labels.extend(own.clone());
        }
        ours["config"]["Labels"] = Value::Object(labels);
    }
    ours
}

pub(crate) fn descriptor(
    media_type: MediaType,
    digest: &Digest,
    size: u64,
) -> anyhow::Result<Descriptor> {
    let digest: oci_spec::image::Digest = digest
        .as_str()
        .parse()
        .with_context(|| format!("invalid digest `{digest}`"))?;
    Ok(DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(size)
        .build()?)
}

pub(crate) fn manifest(
    config: &Blob,
    layers: &[layer::LayerBlob],
    annotations: &BTreeMap<String, String>,
) -> anyhow::Result<ImageManifest> {
    let layers = layers
        .iter()
        .map(|layer| {
            descriptor(
                MediaType::Other(layer::MEDIA_TYPE.to_owned()),
                &layer.digest,
                layer.size,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let annotations: HashMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            &config.digest,
            config.size(),
        )?)
        .layers(layers)
        .annotations(annotations)
        .build()?)
}

/// The `index.json` of an OCI layout: one manifest, named for docker and containerd.
pub(crate) fn layout_index(
    manifest: &Blob,
    reference: &str,
    tag: &str,
) -> anyhow::Result<ImageIndex> {
    let mut descriptor = descriptor(MediaType::ImageManifest, &manifest.digest, manifest.size())?;
    descriptor.set_annotations(Some(HashMap::from([
        ("io.containerd.image.name".to_owned(), reference.to_owned()),
        (
            "org.opencontainers.image.ref.name".to_owned(),
            tag.to_owned(),
        ),
    ])));
    Ok(ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![descriptor])
        .build()?)
}

pub(crate) fn to_blob(doc: &impl serde::Serialize) -> anyhow::Result<Blob> {
    Ok(Blob::from_json(&serde_json::to_value(doc)?))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::definitions;

    fn fixture_labels(n: usize) -> BTreeMap<String, String> {
        (0..n)
            .map(|i| (format!("label.{i:02}"), format!("value {i}")))
            .collect()
    }

    fn backend_config(labels: &BTreeMap<String, String>) -> Blob {
        let def = definitions::find("backend").unwrap();
        let config = config(&ConfigInput {
            def,
            labels,
            created: "2026-11-25T10:42:00Z",
            layers: vec![
                (
                    "sha256:1111111111111111111111111111111111111111111111111111111111111111",
                    "layer: runtime".to_owned(),
                ),
                (
                    "sha256:2222222222222222222222222222222222222222222222222222222222222222",
                    "layer: backend binary".to_owned(),
                ),
            ],
        })
        .unwrap();
        to_blob(&config).unwrap()
    }

    /// oci-spec stores labels in a `HashMap`: serde's order would differ between runs.
    #[test]
    fn many_labels_serialise_identically_and_sorted() {
        let labels = fixture_labels(40);
        let first = backend_config(&labels);
        for _ in 0..20 {
            assert_eq!(backend_config(&labels).bytes, first.bytes);
        }
        let text = String::from_utf8(first.bytes).unwrap();
        let positions: Vec<usize> = labels
            .keys()
            .map(|k| text.find(&format!("\"{k}\"")).unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "labels out of order: {text}"
        );
    }

    #[test]
    fn canonical_json_sorts_nested_keys_and_escapes() {
        let value = serde_json::json!({"b": {"z": 1, "a": [true, null]}, "a": "quote\"\n"});
        assert_eq!(
            String::from_utf8(canonical_json(&value)).unwrap(),
            r#"{"a":"quote\"\n","b":{"a":[true,null],"z":1}}"#
        );
    }

    #[test]
    fn backend_config_snapshot() {
        let labels = BTreeMap::from([(
            "org.opencontainers.image.revision".to_owned(),
            "abc".to_owned(),
        )]);
        let blob = backend_config(&labels);
        let expected = concat!(
            r#"{"architecture":"amd64","config":{"Entrypoint":["/app/timemanager-backend"],"#,
            r#""Env":["PATH=/app","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt","APP_PORT=8080"],"#,
            r#""ExposedPorts":{"8080/tcp":{}},"Labels":{"org.opencontainers.image.revision":"abc"},"#,
            r#""StopSignal":"SIGTERM","User":"65532:65532","WorkingDir":"/app"},"#,
            r#""created":"2026-11-25T10:42:00Z","history":["#,
            r#"{"comment":"cargo xtask build","created":"2026-11-25T10:42:00Z","created_by":"layer: runtime"},"#,
            r#"{"comment":"cargo xtask build","created":"2026-11-25T10:42:00Z","created_by":"layer: backend binary"}],"#,
            r#""os":"linux","rootfs":{"diff_ids":["#,
            r#""sha256:1111111111111111111111111111111111111111111111111111111111111111","#,
            r#""sha256:2222222222222222222222222222222222222222222222222222222222222222"],"type":"layers"}}"#,
        );
        assert_eq!(String::from_utf8(blob.bytes).unwrap(), expected);
    }

    #[test]
    fn config_on_base_keeps_base_layers_env_and_labels_first() {
        let base = serde_json::json!({
            "config": {"Env": ["PATH=/usr/bin", "LANG=C.UTF-8"], "Labels": {"base": "yes", "org.opencontainers.image.title": "base"}, "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:b1"]},
            "history": [{"created_by": "base layer"}],
        });
        let ours = serde_json::json!({
            "config": {"Env": ["PATH=/app"], "Labels": {"org.opencontainers.image.title": "ours"}, "User": "65532:65532"},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:o1"]},
            "history": [{"created_by": "our layer"}],
        });
        let merged = on_base(ours, &base);
        assert_eq!(
            merged["rootfs"]["diff_ids"],
            serde_json::json!(["sha256:b1", "sha256:o1"])
        );
        assert_eq!(merged["history"][0]["created_by"], "base layer");
        assert_eq!(
            merged["config"]["Env"],
            serde_json::json!(["LANG=C.UTF-8", "PATH=/app"])
        );
        assert_eq!(merged["config"]["Labels"]["base"], "yes");
        assert_eq!(
            merged["config"]["Labels"]["org.opencontainers.image.title"],
            "ours"
        );
        assert!(
            merged["config"].get("Cmd").is_none(),
            "the base's command must not leak in"
        );
    }

    #[test]
    fn manifest_snapshot() {
        let config = Blob::from_json(&serde_json::json!({"k": "v"}));
        let layers = [layer::LayerBlob {
            digest: "sha256:3333333333333333333333333333333333333333333333333333333333333333"
                .parse()
                .unwrap(),
            diff_id: "sha256:4444444444444444444444444444444444444444444444444444444444444444"
                .parse()
                .unwrap(),
            size: 42,
        }];
        let annotations = BTreeMap::from([(
            "org.opencontainers.image.version".to_owned(),
            "abc1234".to_owned(),
        )]);
        let blob = to_blob(&manifest(&config, &layers, &annotations).unwrap()).unwrap();
        let expected = format!(
            concat!(
                r#"{{"annotations":{{"org.opencontainers.image.version":"abc1234"}},"#,
                r#""config":{{"digest":"{}","mediaType":"application/vnd.oci.image.config.v1+json","size":9}},"#,
                r#""layers":[{{"digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","#,
                r#""mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":42}}],"#,
                r#""mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}}"#,
            ),
            config.digest
        );
        assert_eq!(String::from_utf8(blob.bytes).unwrap(), expected);
    }
}
