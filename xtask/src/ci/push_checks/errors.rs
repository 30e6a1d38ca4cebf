//! Push checks of permanent failures: wrong passwords, expired tokens, an unknown
//! repository and a rejected manifest, each a clear one-line error of the right kind with
//! no secret in it.

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::{
    ci::{
        push_checks::{Mode, PushLab, options, read_client},
        suite::Check,
    },
    digest::Digest,
    harness::registry::TestRegistry,
    push::{BlobInMemory, Layout, PushOptions, push_read},
    registry::{self, Credentials},
};

/// Permanent failures: each a clear one-line error of the right kind, with no secret in it.
pub(super) fn checks<'a>() -> Vec<Check<PushLab<'a>>> {
    vec![
        Check::new(
            "error-wrong-password-htpasswd",
            "error: wrong password (htpasswd)",
            |lab: &PushLab<'a>| {
                let basic = lab.registry(Mode::Htpasswd)?;
                let creds = wrong_password(basic);
                let opts = options(&basic.host(), Some(&creds), "ci/tm");
                lab.expect_error(
                    &opts,
                    &lab.backend_layout()?,
                    |e| matches!(e, registry::Error::Unauthorized(_)),
                    &["401", "backend", "user `ci`", "check the password"],
                    Some(creds.secret.expose()),
                )
            },
        ),
        Check::new(
            "error-wrong-password-token",
            "error: wrong password (token)",
            |lab: &PushLab<'a>| {
                let token = lab.registry(Mode::Token)?;
                let creds = wrong_password(token);
                let opts = options(&token.host(), Some(&creds), "ci/tm");
                lab.expect_error(
                    &opts,
                    &lab.backend_layout()?,
                    |e| matches!(e, registry::Error::Unauthorized(_)),
                    &[
                        "401",
                        "fetching a token",
                        "token server rejected",
                        "user `ci`",
                    ],
                    Some(creds.secret.expose()),
                )
            },
        ),
        Check::new(
            "expired-token-renewed",
            "expired token is renewed once",
            |lab: &PushLab<'a>| {
                let token = lab.registry(Mode::Token)?;
                let token_server = token.token_server.as_ref().context("no token server")?;
                token_server.issue_expired(1);
                let opts = options(&token.host(), token.credentials.as_ref(), "ci/expired-once");
                let before = token_server.requests();
                let pushed = lab.push(&opts, std::slice::from_ref(lab.backend()?))?;
                let tokens = token_server.requests() - before;
                ensure!(
                    tokens >= 2,
                    "only {tokens} token requests: the expired token was not renewed"
                );
                Ok(format!(
                    "pushed {} with {tokens} token requests",
                    pushed[0].digest
                ))
            },
        ),
        Check::new(
            "error-expired-token",
            "error: expired token (every token)",
            |lab: &PushLab<'a>| {
                let token = lab.registry(Mode::Token)?;
                let token_server = token.token_server.as_ref().context("no token server")?;
                token_server.issue_expired(usize::MAX);
                let opts = options(&token.host(), token.credentials.as_ref(), "ci/expired");
                let res = lab.backend_layout().and_then(|backend| {
                    lab.expect_error(
                        &opts,
                        &backend,
                        |e| matches!(e, registry::Error::Unauthorized(_)),
                        &["401", "invalid_token", "backend"],
                        None,
                    )
                });
                token_server.issue_expired(0);
                res
            },
        ),
        Check::new(
            "error-unknown-repository",
            "error: unknown repository (token server grants nothing)",
            |lab: &PushLab<'a>| {
                let token = lab.registry(Mode::Token)?;
                let opts = options(&token.host(), token.credentials.as_ref(), "unknown/tm");
                let message = lab.expect_error(
                    &opts,
                    &lab.backend_layout()?,
                    |e| matches!(e, registry::Error::Denied(_)),
                    &["unknown/tm/backend", "may not push"],
                    None,
                )?;
                // Read-only clients (deploy) see an unknown repository as an absent manifest.
                let absent = read_client(lab.registry(Mode::NoAuth)?)?
                    .manifest_digest("nobody/nothing", "latest")?;
                ensure!(
                    absent.is_none(),
                    "HEAD on an unknown repository gave {absent:?}"
                );
                Ok(message)
            },
        ),
        Check::new(
            "error-manifest-rejected",
            "error: manifest rejected",
            |lab: &PushLab<'a>| {
                let plain = lab.registry(Mode::NoAuth)?;
                // Layout::read refuses such a manifest on disk: alter the one it read, so
                // the registry is what rejects it.
                let mut broken = Layout::read(&lab.backend()?.layout)?;
                let mut manifest: Value = serde_json::from_slice(&broken.manifest.bytes)?;
                manifest["config"] = Value::from(42);
                let bytes = serde_json::to_vec(&manifest)?;
                broken.manifest = BlobInMemory {
                    digest: Digest::of(&bytes),
                    bytes,
                };
                let opts = options(&plain.host(), None, "ci/rejected");
                let message = lab.expect_error(
                    &opts,
                    &broken,
                    |e| matches!(e, registry::Error::Rejected(_)),
                    &["400", "MANIFEST_INVALID", "pushing manifest", "backend"],
                    None,
                )?;
                lab.expect_tags(plain, "ci/rejected/backend", &broken.manifest.digest, false)?;
                Ok(message)
            },
        ),
    ]
}

/// The registry's user with a wrong password.
fn wrong_password(registry: &TestRegistry) -> Credentials {
    let creds = registry
        .credentials
        .clone()
        .unwrap_or_else(|| Credentials::new("ci", "", "test"));
    Credentials::new(
        &creds.username,
        &format!("{}-wrong", creds.secret.expose()),
        "test",
    )
}

impl PushLab<'_> {
    /// A push that must fail with a registry error of `kind` whose one-line message holds
    /// every needle and not the secret; returns the message.
    /// The backend as push reads it from its OCI layout.
    fn backend_layout(&self) -> anyhow::Result<Layout> {
        Layout::read(&self.backend()?.layout)
    }

    fn expect_error(
        &self,
        opts: &PushOptions,
        image: &Layout,
        kind: fn(&registry::Error) -> bool,
        needles: &[&str],
        secret: Option<&str>,
    ) -> anyhow::Result<String> {
        let err = match push_read(self.sh, opts, std::slice::from_ref(image)) {
            Ok(_) => bail!("the push succeeded"),
            Err(err) => err,
        };
        let message = format!("{err:#}");
        let typed = err
            .downcast_ref::<registry::Error>()
            .with_context(|| format!("not a registry error: {message}"))?;
        ensure!(kind(typed), "wrong error kind {typed:?}");
        for needle in needles {
            ensure!(
                message.contains(needle),
                "`{needle}` missing from: {message}"
            );
        }
        ensure!(!message.contains('\n'), "error spans lines: {message}");
        if let Some(secret) = secret {
            ensure!(
                !message.contains(secret),
                "the secret leaked into: {message}"
            );
        }
        Ok(message)
    }
}
