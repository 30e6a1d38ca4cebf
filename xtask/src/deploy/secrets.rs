//! Secret values: never printed, never in argv, and scrubbed from everything the deploy prints.

pub(crate) use crate::registry::credentials::Secret;

/// Replaces every known secret value in text the deploy prints: remote output, container
/// logs, error messages. A second line of defence: secrets are not supposed to get there.
#[derive(Debug, Default, Clone)]
pub(crate) struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    values: Vec<Secret>,
}

impl Redactor {
    pub(crate) fn add(&mut self, secret: &Secret) {
        // Multi-line secrets (a private key) are matched line by line: output is printed by line.
        for line in secret.expose().lines() {
            let line = line.trim();
            // Very short fragments (a key's `-----` fences cut by `trim`) would mangle output.
            if line.len() >= 4 && !self.values.iter().any(|known| known.expose() == line) {
                self.values.push(Secret::new(line));
            }
        }
        self.values
            .sort_by_key(|value| std::cmp::Reverse(value.expose().len()));
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for value in &self.values {
            if text.contains(value.expose()) {
                text = text.replace(value.expose(), "***");
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2-long");
        assert_eq!(format!("{secret:?}"), "<redacted>");
    }

    #[test]
    fn redacts_longest_first_and_by_line() {
        let mut redactor = Redactor::default();
        redactor.add(&Secret::new("abcd"));
        redactor.add(&Secret::new("abcdefgh"));
        redactor.add(&Secret::new(
            "-----BEGIN KEY-----\nKEYLINE0123456789\n-----END KEY-----\n",
        ));
        redactor.add(&Secret::new(""));
        assert_eq!(
            redactor.redact("x abcdefgh y abcd z KEYLINE0123456789"),
            "x *** y *** z ***"
        );
        assert_eq!(redactor.redact("nothing here"), "nothing here");
    }
}
