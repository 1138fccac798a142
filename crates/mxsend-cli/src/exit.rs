//! Exit statuses, from sendmail's sysexits.h. This is the one place that
//! turns outcomes into a status.

use std::process::ExitCode;

use mxsend::DeliveryReport;
use mxsend::proto::Outcome;

/// Success.
pub const OK: u8 = 0;
/// The command was used incorrectly (EX_USAGE).
pub const USAGE: u8 = 64;
/// The message is malformed (EX_DATAERR).
pub const DATA_ERROR: u8 = 65;
/// An addressee is unknown (EX_NOUSER).
pub const NO_USER: u8 = 67;
/// A destination host or domain does not exist (EX_NOHOST).
pub const NO_HOST: u8 = 68;
/// A permanent failure of another kind (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// An internal error (EX_SOFTWARE).
pub const SOFTWARE: u8 = 70;
/// A temporary failure: try again later (EX_TEMPFAIL).
pub const TEMPORARY: u8 = 75;

/// The status for a delivery: any deferred or uncertain recipient makes it
/// temporary, since a later try may still deliver; otherwise any failed
/// recipient makes it permanent, 68 when every failure is a missing domain,
/// 67 when one is an unknown mailbox (enhanced status 5.1.x); else success.
pub fn for_report(report: &DeliveryReport) -> u8 {
    let pending = report
        .recipients
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Deferred | Outcome::Uncertain));
    if pending {
        return TEMPORARY;
    }
    let failed: Vec<_> = report
        .recipients
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .collect();
    if failed.is_empty() {
        return OK;
    }
    if failed.iter().all(|r| r.no_such_domain) {
        return NO_HOST;
    }
    let unknown_user = failed.iter().any(|r| {
        r.reply
            .as_ref()
            .and_then(|reply| reply.enhanced.as_deref())
            .is_some_and(|code| code.starts_with("5.1."))
    });
    if unknown_user { NO_USER } else { UNAVAILABLE }
}

/// Converts a status to the process exit code.
pub fn code(status: u8) -> ExitCode {
    ExitCode::from(status)
}
