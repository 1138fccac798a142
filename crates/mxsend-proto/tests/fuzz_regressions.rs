//! Replays the fuzz corpus through the checks of the fuzz targets.
//!
//! The checks live in `fuzz/src/checks/` and are included here by path, so
//! this test and `cargo fuzz run` judge an input the same way. Every file
//! under `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` is run
//! through the check of its target. To keep an input that the fuzzer found,
//! copy it to `fuzz/regressions/<target>/` under a name that says what it
//! tests.

#[path = "../../../fuzz/src/checks/mod.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Returns the folder of the cargo-fuzz project.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Lists the files in `folder`, sorted by name. A missing folder has none.
fn files_in(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable folder entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every corpus and regression file of `target`, and fails
/// with the list of files that broke an invariant.
fn replay(target: &str, check: fn(&[u8])) {
    let corpus = fuzz_dir().join("corpus").join(target);
    let seeds = files_in(&corpus);
    assert!(
        !seeds.is_empty(),
        "no seed inputs in {}: the fuzz corpus is missing, restore it from git",
        corpus.display()
    );
    let regressions = files_in(&fuzz_dir().join("regressions").join(target));

    let mut failures = Vec::new();
    for file in seeds.iter().chain(&regressions) {
        let input = std::fs::read(file).expect("readable corpus file");
        if catch_unwind(|| check(&input)).is_err() {
            failures.push(file.display().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {target} inputs broke an invariant (the panic messages above say which): {failures:#?}",
        failures.len(),
        seeds.len() + regressions.len(),
    );
}

#[test]
fn corpus_reply_parser() {
    replay("reply_parser", checks::reply_parser::check);
}

#[test]
fn corpus_ehlo() {
    replay("ehlo", checks::ehlo::check);
}

#[test]
fn corpus_address() {
    replay("address", checks::address::check);
}

#[test]
fn corpus_data_roundtrip() {
    replay("data_roundtrip", checks::data::check);
}

#[test]
fn corpus_session() {
    replay("session", checks::session::check);
}

/// Runs `check` on an input that once broke an invariant, and fails with
/// `bug` when it does again.
fn assert_passes(check: fn(&[u8]), input: &[u8], bug: &str) {
    let result = catch_unwind(AssertUnwindSafe(|| check(input)));
    assert!(result.is_ok(), "regression: {bug}");
}

/// A 2yz reply to DATA, where only 354 lets the client send the content,
/// must not mark any recipient delivered. The `session` target found a
/// version that took the outcome from that reply, so `Outcome::of_reply`
/// made every accepted recipient delivered with no content sent.
#[test]
fn session_positive_data_reply_not_delivered() {
    // Greeting, EHLO without PIPELINING, a transaction for a@mx.test, then
    // 250 to MAIL, RCPT and DATA.
    let input = b"\x00220 a\n250 a\n\x01\x01250 a\n250 a\n250 a\n";
    assert_passes(
        checks::session::check,
        input,
        "a 250 reply to DATA marks the recipients delivered, but no content was sent",
    );
}

/// `ClientSession::quit` during a transaction must report that transaction
/// before `Event::Closed`, as every other early end does. The `session`
/// target found a version that closed with `Ok(())` and no report, so the
/// recipients got no outcome at all.
#[test]
fn session_quit_reports_open_transaction() {
    // Greeting, EHLO, a transaction for a@mx.test, then QUIT before any
    // reply to MAIL.
    let input = b"\x00220 a\n250 a\n\x01\x01\x03";
    assert_passes(
        checks::session::check,
        input,
        "quit() during a transaction drops it without a report",
    );
}

/// An accepted address must parse back to itself. The `address` target
/// found a version that trimmed Unicode white space (`str::trim`) before
/// stripping the angle brackets and then accepted any non-ASCII character
/// in the local part, so a no-break space just inside the brackets stayed
/// in the address and the next parse trimmed it off.
#[test]
fn address_leading_no_break_space_reparses() {
    let input = "<\u{a0}a@b.test>".as_bytes();
    assert_passes(
        checks::address::check,
        input,
        "an accepted address that starts with U+00A0 parses back to a different address",
    );
}
