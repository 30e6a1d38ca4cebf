//! Build script: only tells Cargo to re-embed migrations when `migrations/` changes.

fn main() {
    // `sqlx::migrate!()` reads the directory at compile time but cannot ask Cargo to
    // track new files, so without this a freshly added migration would be silently skipped.
    println!("cargo:rerun-if-changed=migrations");
}
