//! The migrations are embedded in the binary (`sqlx::migrate!`): a new or changed file
//! under `migrations/` alone must rebuild it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
