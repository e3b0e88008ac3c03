//! Checks that bindgen's output defines every item of the checked-in bindings.
//!
//! bindgen does not fail when it cannot evaluate a macro: it leaves the constant out. That
//! happens when its clang macro fallback cannot write its scratch files, or with a header whose
//! macro clang cannot evaluate, and the safe crate would then fail to compile far from the
//! cause. `src/generated.rs` describes the newest kernel API and `include/newest.h` supplies
//! whatever an older header lacks, so every header must yield at least its items; anything
//! less is incomplete, and the build uses `src/generated.rs` instead.

use std::collections::BTreeSet;

/// `Ok` if `generated` names every constant, struct and union that `reference` names; otherwise
/// the reason, listing the missing names.
pub fn check(generated: &str, reference: &str) -> Result<(), String> {
    let have = names(generated)?;
    let want = names(reference).map_err(|e| format!("src/generated.rs: {e}"))?;
    let missing: Vec<&str> = want.difference(&have).map(String::as_str).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "its output lacks {} item(s) that every kernel header plus include/newest.h \
             defines: {}",
            missing.len(),
            missing.join(", ")
        ))
    }
}

fn names(source: &str) -> Result<BTreeSet<String>, String> {
    let file = syn::parse_file(source).map_err(|e| format!("does not parse: {e}"))?;
    Ok(file
        .items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Const(c) => Some(c.ident.to_string()),
            syn::Item::Struct(s) => Some(s.ident.to_string()),
            syn::Item::Union(u) => Some(u.ident.to_string()),
            _ => None,
        })
        .collect())
}
