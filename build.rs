// sqlx::migrate! embeds migrations/ at compile time; without this a new migration file would
// not rebuild the crate and an incremental build would ship the old schema (sqlx's own advice).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
