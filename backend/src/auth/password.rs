//! Passwords: Argon2id hashing with OWASP's parameters, the sign-in check, the rules for
//! a new password and the one-time passwords an admin hands out.

use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Argon2id parameters of OWASP's Password Storage Cheat Sheet (its first listed
/// configuration): "a minimum configuration of 19 MiB of memory, an iteration count of 2,
/// and 1 degree of parallelism". Stored in every hash (PHC string), so raising them later
/// keeps old hashes verifiable.
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

/// Shortest password accepted (NIST SP 800-63B asks for at least 8; the issue for 12).
pub const MIN_CHARS: usize = 12;
/// Longest password accepted: bounds the work one request can ask of the hasher.
pub const MAX_BYTES: usize = 1024;

/// The 10,000 most common passwords, most common first: the `passwords` frequency list
/// of zxcvbn 4.5.0 (PyPI, MIT licence), itself from Mark Burnett's 10 million leaked
/// passwords (xato.net). Compared in lower case.
const COMMON: &str = include_str!("common-passwords.txt");

/// Characters of generated one-time passwords: no look-alikes (0/O, 1/l/I).
const ONE_TIME_ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// 24 characters of a 57-letter alphabet: 139 bits.
const ONE_TIME_LEN: usize = 24;

fn argon2id() -> Argon2<'static> {
    // The constants are valid, so the fallback (the crate's defaults, equal today) is
    // never taken.
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` with a fresh random salt into a PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$...`). CPU- and memory-bound: call it off the
/// async runtime.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2id()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// True if `password` matches `stored`. Without a stored hash (unknown email, account
/// without a password) it still hashes once against a fixed dummy hash, so the answer
/// takes as long as a wrong password. The comparison of the outputs is constant-time
/// (password-hash's `Output` equality).
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    let parsed = stored.and_then(|phc| PasswordHash::new(phc).ok());
    match parsed {
        Some(phc) => argon2id()
            .verify_password(password.as_bytes(), &phc)
            .is_ok(),
        None => {
            if let Ok(dummy) = PasswordHash::new(dummy_hash()) {
                let _ = argon2id().verify_password(password.as_bytes(), &dummy);
            }
            false
        }
    }
}

/// Computes the dummy hash now, so the first sign-in with an unknown email is not the one
/// that pays for it (which would tell that the email is unknown).
pub fn warm_up() {
    let _ = dummy_hash();
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash(&one_time()).unwrap_or_default())
}

/// Checks a password someone chose; the error says what to change.
pub fn check_new(password: &str, email: &str, username: &str) -> Result<(), String> {
    if password.chars().count() < MIN_CHARS {
        return Err(format!(
            "password must be at least {MIN_CHARS} characters long"
        ));
    }
    if password.len() > MAX_BYTES {
        return Err(format!("password must be at most {MAX_BYTES} bytes long"));
    }
    let lower = password.to_lowercase();
    if lower == email.to_lowercase() || lower == username.to_lowercase() {
        return Err("password must not be the email address or the username".to_owned());
    }
    if is_common(&lower) {
        return Err("password is one of the most common passwords; choose another".to_owned());
    }
    Ok(())
}

fn is_common(lower: &str) -> bool {
    COMMON.lines().any(|line| line == lower)
}

/// A random one-time password for an admin to hand out (shown once, never stored in clear).
pub fn one_time() -> String {
    let mut bytes = [0u8; ONE_TIME_LEN * 2];
    // getrandom only fails without an OS entropy source, where nothing here can work;
    // the rejection sampling below then yields an empty (unusable) password.
    if getrandom::fill(&mut bytes).is_err() {
        return String::new();
    }
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - 256 % ONE_TIME_ALPHABET.len();
    bytes
        .iter()
        .filter(|b| usize::from(**b) < limit)
        .take(ONE_TIME_LEN)
        .map(|b| char::from(ONE_TIME_ALPHABET[usize::from(*b) % ONE_TIME_ALPHABET.len()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_the_owasp_parameters() {
        let phc = hash("correct horse battery staple").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify("correct horse battery staple", Some(&phc)));
        assert!(!verify("correct horse battery stapler", Some(&phc)));
        assert!(!verify("anything", None));
        assert!(!verify("anything", Some("not a phc string")));
        assert_ne!(phc, hash("correct horse battery staple").unwrap(), "salted");
    }

    #[test]
    fn rules_for_new_passwords() {
        assert!(
            check_new("short", "a@b.co", "ann")
                .unwrap_err()
                .contains("12")
        );
        assert!(check_new("1234567890123", "a@b.co", "ann").is_ok());
        // In the list, and long enough to pass the length rule.
        assert!(
            check_new("1q2w3e4r5t6y", "a@b.co", "ann")
                .unwrap_err()
                .contains("common")
        );
        assert!(check_new("ANN@EXAMPLE.COM", "ann@example.com", "ann").is_err());
        assert!(check_new(&"x".repeat(MAX_BYTES + 1), "a@b.co", "ann").is_err());
        // Twelve characters, not twelve bytes.
        assert!(check_new("ééééééééééé", "a@b.co", "ann").is_err());
    }

    #[test]
    fn common_list_is_the_shipped_file() {
        assert_eq!(COMMON.lines().count(), 10_000);
        assert!(is_common("password") && is_common("123456"));
        assert!(COMMON.lines().all(|line| line == line.to_lowercase()));
    }

    #[test]
    fn one_time_passwords_pass_the_rules_and_differ() {
        let a = one_time();
        assert_eq!(a.chars().count(), ONE_TIME_LEN);
        assert!(check_new(&a, "a@b.co", "ann").is_ok());
        assert_ne!(a, one_time());
    }
}
