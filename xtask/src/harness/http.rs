//! Small blocking HTTP helpers for checks against services on loopback: a client (`get`,
//! `wait_for_status`) and the request-head reader of the test servers (token server, fault proxy).

use std::{
    io::BufRead,
    time::{Duration, Instant},
};

use anyhow::bail;

/// A response of any status.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
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
pub(crate) fn get(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
    let mut req = agent().get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut res = req
        .call()
        .map_err(|err| anyhow::format_err!("GET {url}: {err}"))?;
    let status = res.status().as_u16();
    let headers = header_pairs(res.headers());
    let body = res
        .body_mut()
        .read_to_vec()
        .map_err(|err| anyhow::format_err!("GET {url}: reading body: {err}"))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A response's headers as name/value pairs, values decoded lossily.
pub(crate) fn header_pairs(headers: &ureq::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Polls `url` until it answers `status`, for at most `timeout`.
pub(crate) fn wait_for_status(url: &str, status: u16, timeout: Duration) -> anyhow::Result<Reply> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match get(url, &[]) {
            Ok(res) if res.status == status => return Ok(res),
            Ok(res) => format!("status {}: {}", res.status, res.text()),
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("{url} did not answer {status} within {timeout:?}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A request line and headers, as the test servers here receive them.
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    /// The bytes as received, to forward unchanged but for `Connection`.
    pub(crate) raw_lines: Vec<String>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn content_length(&self) -> u64 {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Reads a request line and headers, up to the blank line.
pub(crate) fn read_head(reader: &mut impl BufRead) -> anyhow::Result<Head> {
    let mut raw_lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        total += n;
        if n == 0 || total > 64 * 1024 {
            bail!("connection closed or header too large");
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            break;
        }
        raw_lines.push(line);
    }
    let mut request_line = raw_lines
        .first()
        .map(|l| l.split(' '))
        .into_iter()
        .flatten();
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers = raw_lines
        .iter()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Head {
        method,
        target,
        headers,
        raw_lines,
    })
}
