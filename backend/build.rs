//! `sqlx::migrate!` embeds the migrations folder; rebuild backend and worker when it changes.
//! Without the `server` feature (as xtask builds it) nothing is embedded, so nothing is watched.

fn main() {
    if std::env::var_os("CARGO_FEATURE_SERVER").is_some() {
        println!("cargo:rerun-if-changed=../migrations");
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
