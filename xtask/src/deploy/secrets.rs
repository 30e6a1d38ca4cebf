//! Secret values: never printed, never in argv, and scrubbed from everything the deploy
//! prints by the registry's one [`Redactor`], with its one placeholder `<redacted>`.

pub(crate) use crate::registry::credentials::{Redactor, Secret};

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
            "x <redacted> y <redacted> z <redacted>"
        );
        assert_eq!(redactor.redact("nothing here"), "nothing here");
    }
}
