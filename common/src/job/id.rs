//! Job ids: unguessable, and checked for their shape before they reach a storage key or a query.

/// 128 random bits as 32 lowercase hex digits.
pub fn new_job_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Whether `s` has the shape of a job id (checked before it reaches storage keys or queries).
pub fn is_valid_job_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
