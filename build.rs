//! Tells the integration tests whether a Tansu broker is installed. The tests that need one
//! carry `#[cfg_attr(tansu_missing, ignore = "…")]`, so without it they are reported as
//! ignored, with the reason, instead of passing without having run; with
//! ADCLICK_REQUIRE_TANSU=1 (CI) `tansu_missing` is never set, so a missing broker fails them.
//! The search is `adclick::kafka::embedded::find_tansu`'s, which the tests then use.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tansu_missing)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TANSU_BIN");
    println!("cargo::rerun-if-env-changed=ADCLICK_REQUIRE_TANSU");
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let installed = home.join(".cache/adclick/tansu/bin/tansu");
    let found = match std::env::var_os("TANSU_BIN") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|d| d.join("tansu"))
                .chain([installed.clone(), PathBuf::from("/opt/tansu/bin/tansu")])
                .find(|p| p.is_file())
        }
    };
    // Installing or removing it where scripts/tansu.sh puts it is noticed on the next build.
    let cache = home.join(".cache/adclick");
    let watched = installed
        .ancestors()
        .skip(1)
        .take_while(|d| d.starts_with(&cache));
    if let Some(dir) = watched.into_iter().find(|d| d.is_dir()) {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    let required = std::env::var("ADCLICK_REQUIRE_TANSU").as_deref() == Ok("1");
    if found.is_none() && !required {
        println!("cargo::rustc-cfg=tansu_missing");
    }
}
