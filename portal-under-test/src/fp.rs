//! Fault points for the harness's CI-gate test. They exist only with the crate feature
//! `failpoints` (which enables `fail/failpoints`); in default builds `fail_point!` expands to
//! nothing and every check below is a constant `false`.

/// True when the fault point `name` is set to `return` (via the `FAILPOINTS` env var).
#[allow(unused_variables)]
pub fn active(name: &'static str) -> bool {
    fail::fail_point!(name, |_| true);
    false
}

pub const SKIP_LOCAL_SIGNIN_CHECK: &str = "skip_local_signin_check";
pub const NEVER_MARK_DISCLOSED: &str = "never_mark_disclosed";
pub const FIRST_OF_MANY_MATCHES: &str = "first_of_many_matches";
pub const NO_EXPIRY: &str = "no_expiry";
pub const CORRUPT_KEY_DIGIT: &str = "corrupt_key_digit";
pub const FOREIGN_DIFFERS: &str = "foreign_differs";
/// Not a broken rule but an injected store failure: every audit row write fails, so the
/// transaction holding it rolls back (its requests get 500 and are shown nothing).
pub const FAIL_AUDIT_WRITE: &str = "fail_audit_write";
