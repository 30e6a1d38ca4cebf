//! `WWW-Authenticate` challenges (RFC 7235): which scheme a registry wants, and for Bearer,
//! where its token server is and which scopes it asks for.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer(Bearer),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bearer {
    /// The token endpoint.
    pub(crate) realm: String,
    /// Echoed back verbatim in the token request.
    pub(crate) service: Option<String>,
    /// Resource scopes the registry wants, each `type:name:actions`.
    pub(crate) scopes: Vec<String>,
    /// `invalid_token` or `insufficient_scope` on a request that carried a token.
    pub(crate) error: Option<String>,
}

/// Picks the challenge to answer from every `WWW-Authenticate` header of a response:
/// Bearer first, then Basic; other schemes are ignored. A Bearer challenge without a
/// realm cannot be answered and is an error.
pub(crate) fn pick(headers: &[&str]) -> Result<Option<Challenge>, String> {
    let mut basic = false;
    for header in headers {
        for (scheme, params) in parse(header) {
            match scheme.as_str() {
                "bearer" => {
                    let Some(realm) = params.get("realm").filter(|r| !r.is_empty()) else {
                        return Err(format!("Bearer challenge without a realm: `{header}`"));
                    };
                    return Ok(Some(Challenge::Bearer(Bearer {
                        realm: realm.clone(),
                        service: params.get("service").cloned(),
                        scopes: params
                            .get("scope")
                            .map(|s| s.split_whitespace().map(str::to_owned).collect())
                            .unwrap_or_default(),
                        error: params.get("error").cloned(),
                    })));
                }
                "basic" => basic = true,
                _ => (),
            }
        }
    }
    Ok(basic.then_some(Challenge::Basic))
}

/// Splits one header value into challenges: scheme names and parameters are lower-cased,
/// values may be tokens or quoted strings with `\` escapes, and one header may hold
/// several challenges (`Basic realm="a", Bearer realm="b"`).
pub(crate) fn parse(header: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut lexer = Lexer {
        chars: header.chars().collect(),
        pos: 0,
    };
    let mut challenges: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    loop {
        lexer.skip(|c| c == ',' || c.is_whitespace());
        let scheme = lexer.token();
        if scheme.is_empty() {
            if lexer.at_end() {
                break;
            }
            // Not a token: skip the offending character and resynchronise.
            lexer.pos += 1;
            continue;
        }
        let mut params = BTreeMap::new();
        loop {
            lexer.skip(|c| c == ',' || c.is_whitespace());
            let start = lexer.pos;
            let name = lexer.token();
            lexer.skip(char::is_whitespace);
            if name.is_empty() || !lexer.eat('=') {
                // The start of the next challenge (or a token68 credential, which the
                // outer loop then skips as an unknown scheme): rewind.
                lexer.pos = start;
                break;
            }
            lexer.skip(char::is_whitespace);
            let value = if lexer.eat('"') {
                lexer.quoted()
            } else {
                lexer.token()
            };
            params.insert(name.to_ascii_lowercase(), value);
        }
        challenges.push((scheme.to_ascii_lowercase(), params));
    }
    challenges
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
}

impl Lexer {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn skip(&mut self, pred: impl Fn(char) -> bool) {
        while self.chars.get(self.pos).is_some_and(|c| pred(*c)) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.chars.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// RFC 7230 `token` characters.
    fn token(&mut self) -> String {
        let start = self.pos;
        self.skip(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/:".contains(c));
        self.chars[start..self.pos].iter().collect()
    }

    fn quoted(&mut self) -> String {
        let mut out = String::new();
        while let Some(&c) = self.chars.get(self.pos) {
            self.pos += 1;
            match c {
                '"' => break,
                '\\' => {
                    if let Some(&escaped) = self.chars.get(self.pos) {
                        out.push(escaped);
                        self.pos += 1;
                    }
                }
                c => out.push(c),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(header: &str) -> Bearer {
        match pick(&[header]).unwrap() {
            Some(Challenge::Bearer(bearer)) => bearer,
            other => panic!("expected Bearer, got {other:?}"),
        }
    }

    #[test]
    fn ghcr_challenge() {
        let b = bearer(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:open-feature/flagd:pull""#,
        );
        assert_eq!(b.realm, "https://ghcr.io/token");
        assert_eq!(b.service.as_deref(), Some("ghcr.io"));
        assert_eq!(b.scopes, ["repository:open-feature/flagd:pull"]);
        assert_eq!(b.error, None);
    }

    #[test]
    fn distribution_mount_challenge_has_two_scopes_and_an_error() {
        let b = bearer(
            r#"Bearer realm="http://127.0.0.1:5004/token",service="test-registry",scope="repository:team/app:pull,push repository:team/base:pull",error="insufficient_scope""#,
        );
        assert_eq!(
            b.scopes,
            ["repository:team/app:pull,push", "repository:team/base:pull"]
        );
        assert_eq!(b.error.as_deref(), Some("insufficient_scope"));
    }

    #[test]
    fn case_spaces_escapes_and_bare_tokens() {
        let b =
            bearer(r#"BEARER  Realm = "https://a.example/t\"x" , SERVICE=reg.example ,scope="""#);
        assert_eq!(b.realm, "https://a.example/t\"x");
        assert_eq!(b.service.as_deref(), Some("reg.example"));
        assert!(b.scopes.is_empty());
    }

    #[test]
    fn bearer_is_preferred_over_basic_across_and_within_headers() {
        assert_eq!(
            pick(&[r#"Basic realm="basic-realm""#]).unwrap(),
            Some(Challenge::Basic)
        );
        let both = r#"Basic realm="x", Bearer realm="https://t.example/token",service="s""#;
        assert_eq!(bearer(both).realm, "https://t.example/token");
        let b = match pick(&["Negotiate abc==", r#"Bearer realm="https://t/""#]).unwrap() {
            Some(Challenge::Bearer(b)) => b,
            other => panic!("{other:?}"),
        };
        assert_eq!(b.realm, "https://t/");
        assert_eq!(pick(&["Negotiate", "NTLM"]).unwrap(), None);
        assert_eq!(pick(&[]).unwrap(), None);
    }

    #[test]
    fn bearer_without_realm_is_an_error() {
        let err = pick(&[r#"Bearer service="x""#]).unwrap_err();
        assert!(err.contains("without a realm"), "{err}");
    }

    #[test]
    fn token68_does_not_swallow_the_next_challenge() {
        let parsed = parse(r#"Negotiate YII=, Basic realm="r""#);
        let schemes: Vec<&str> = parsed.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(schemes, ["negotiate", "basic"]);
        assert_eq!(parsed[1].1["realm"], "r");
    }
}
