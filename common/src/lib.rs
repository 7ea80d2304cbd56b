//! What BackLess's services share.

pub mod limits;
