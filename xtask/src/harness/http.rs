//! Small blocking HTTP helpers for checks against services on loopback.

use std::time::{Duration, Instant};

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// GET with extra request headers; any status is a response, only transport failures are errors.
pub(crate) fn get(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Response> {
    let mut req = agent().get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut res = req
        .call()
        .map_err(|err| anyhow::format_err!("GET {url}: {err}"))?;
    let status = res.status().as_u16();
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = res
        .body_mut()
        .read_to_vec()
        .map_err(|err| anyhow::format_err!("GET {url}: reading body: {err}"))?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Polls `url` until it answers `status`, for at most `timeout`.
pub(crate) fn wait_for_status(
    url: &str,
    status: u16,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match get(url, &[]) {
            Ok(res) if res.status == status => return Ok(res),
            Ok(res) => format!("status {}: {}", res.status, res.text()),
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            anyhow::bail!("{url} did not answer {status} within {timeout:?}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
