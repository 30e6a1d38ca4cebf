//! SPDX 2.3 bill of materials per image, from `cargo metadata` and `package-lock.json`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{
    image::{
        compile::TARGET,
        definitions::{Contents, ImageDef},
    },
    project::{self, Revision},
};

/// A third-party component: ecosystem (`cargo`, `npm`), name and version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Component {
    pub(crate) ecosystem: &'static str,
    pub(crate) name: String,
    pub(crate) version: String,
}

/// The SBOM document for one image; `metadata` is `cargo metadata`'s JSON output.
pub(crate) fn document(
    def: &ImageDef,
    metadata: &Value,
    package_lock: Option<&Value>,
    revision: &Revision,
    source_url: &str,
) -> anyhow::Result<Value> {
    let mut components = BTreeSet::new();
    for layer in def.layers {
        match layer.contents {
            Contents::CargoBinary { package, .. } => {
                components.extend(cargo_components(metadata, package)?)
            }
            Contents::ViteDist { .. } => {
                let lock =
                    package_lock.context("frontend/package-lock.json is needed for the SBOM")?;
                components.extend(npm_components(lock));
            }
            Contents::Runtime => {
                components.insert(Component {
                    ecosystem: "cargo",
                    name: "webpki-root-certs".to_owned(),
                    version: cargo_version(metadata, "webpki-root-certs").unwrap_or_default(),
                });
            }
        }
    }
    let packages: Vec<Value> = components
        .iter()
        .enumerate()
        .map(|(idx, c)| {
            json!({
                "SPDXID": format!("SPDXRef-Package-{idx}"),
                "name": c.name,
                "versionInfo": c.version,
                "downloadLocation": "NOASSERTION",
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": format!("pkg:{}/{}@{}", c.ecosystem, c.name, c.version),
                }],
            })
        })
        .collect();
    let relationships: Vec<Value> = (0..packages.len())
        .map(|idx| {
            json!({
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": format!("SPDXRef-Package-{idx}"),
            })
        })
        .collect();
    Ok(json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("timemanager-{}-{}", def.name, revision.version),
        "documentNamespace": format!("{source_url}/sbom/{}/{}", def.name, revision.commit),
        "creationInfo": {
            "created": project::rfc3339(revision.epoch),
            "creators": ["Tool: timemanager-xtask"],
        },
        "packages": packages,
        "relationships": relationships,
    }))
}

/// Crates linked into `package`'s binary: normal dependencies on the image's target, transitively.
fn cargo_components(metadata: &Value, package: &str) -> anyhow::Result<Vec<Component>> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?;
    let by_id: BTreeMap<&str, &Value> = packages
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let root = packages
        .iter()
        .find(|p| p["name"] == package)
        .and_then(|p| p["id"].as_str())
        .with_context(|| format!("cargo metadata does not list `{package}`"))?;
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let mut seen = BTreeSet::from([root]);
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|kind| kind["kind"].is_null());
            if let (true, Some(dep_id)) = (normal, dep["pkg"].as_str())
                && seen.insert(dep_id)
            {
                stack.push(dep_id);
            }
        }
    }
    Ok(seen
        .into_iter()
        .filter_map(|id| by_id.get(id))
        .filter_map(|p| {
            Some(Component {
                ecosystem: "cargo",
                name: p["name"].as_str()?.to_owned(),
                version: p["version"].as_str()?.to_owned(),
            })
        })
        .collect())
}

fn cargo_version(metadata: &Value, name: &str) -> Option<String> {
    metadata["packages"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?["version"]
        .as_str()
        .map(str::to_owned)
}

/// Packages the production bundle can contain: every locked package not marked `dev`.
fn npm_components(lock: &Value) -> Vec<Component> {
    let Some(packages) = lock["packages"].as_object() else {
        return Vec::new();
    };
    packages
        .iter()
        .filter(|(path, meta)| !path.is_empty() && meta["dev"] != Value::Bool(true))
        .filter_map(|(path, meta)| {
            let name = path.rsplit("node_modules/").next()?.to_owned();
            Some(Component {
                ecosystem: "npm",
                name,
                version: meta["version"].as_str()?.to_owned(),
            })
        })
        .collect()
}

/// `cargo metadata` for the image target, read once per build.
pub(crate) fn cargo_metadata(sh: &xshell::Shell) -> anyhow::Result<Value> {
    let cargo = crate::project::cargo(sh);
    let text = xshell::cmd!(
        sh,
        "{cargo} metadata --format-version 1 --locked --filter-platform {TARGET}"
    )
    .quiet()
    .read()?;
    serde_json::from_str(&text).context("parsing `cargo metadata` output")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npm_components_skip_dev_and_root() {
        let lock = json!({"packages": {
            "": {"name": "frontend", "version": "0.0.0"},
            "node_modules/react": {"version": "19.0.0"},
            "node_modules/@scope/pkg": {"version": "1.2.3"},
            "node_modules/vitest": {"version": "3.0.0", "dev": true},
        }});
        let names: Vec<String> = npm_components(&lock)
            .into_iter()
            .map(|c| format!("{}@{}", c.name, c.version))
            .collect();
        assert_eq!(names, ["@scope/pkg@1.2.3", "react@19.0.0"]);
    }
}
